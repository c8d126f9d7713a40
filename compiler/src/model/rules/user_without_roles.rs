//! Rule `dbward::user_without_roles` (warning): a person with no roles.
//!
//! **Why it matters:** they can be issued a certificate but reach nothing; usually an
//! unfinished edit (or an off-boarding that should have removed the user).
//!
//! **Example:**
//! ```kdl
//! user carol
//! ```
//!
//! **How to fix:** add `{ roles … }`, or remove the user.

use crate::diag::Diagnostic;
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    for user in manifest.nodes_named("user") {
        let has_roles = user.children_named("roles").any(|r| !r.args.is_empty());
        if !has_roles {
            diags.push(
                Diagnostic::warning(
                    "dbward::user_without_roles",
                    format!(
                        "user `{}` has no roles and can reach nothing",
                        user.first_str().unwrap_or("?")
                    ),
                )
                .label(user.first_arg_span(), "no roles")
                .help("add `roles …` inside the user's block, or remove the user"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, expect};

    #[test]
    fn warns() {
        expect("user carol\n", "dbward::user_without_roles", "`carol`");
        absent(
            "role r {\n}\nuser carol {\n    roles r\n}\n",
            "dbward::user_without_roles",
        );
    }
}
