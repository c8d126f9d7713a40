//! Human rendering of a plan, after Terraform's conventions that CI users already read:
//! `+` add, `~` change, `-` remove, a unified diff per changed text file, `(sensitive)` for
//! keys, and a last line `Plan: N to add, N to change, N to destroy.` or `No changes.`

use std::fmt::Write;

use similar::TextDiff;

use super::{Action, Change, Drift, Plan};

/// Lines of context around each diff hunk.
const CONTEXT: usize = 3;

/// The plan as text, ending with a newline.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    if plan.is_empty() {
        out.push_str("No changes.");
        if plan.state_outdated {
            out.push_str(" (apply will record the current files as written by dbward.)");
        }
        out.push('\n');
        return out;
    }
    out.push_str("dbward will make these changes:\n\n");
    for change in &plan.changes {
        render_change(&mut out, change);
    }
    let drifted: Vec<&str> = plan.drifted().map(|c| c.path.as_str()).collect();
    if !drifted.is_empty() {
        let _ = writeln!(
            out,
            "\nWarning: {} file(s) were changed outside dbward; apply overwrites or removes them \
             only with --force: {}",
            drifted.len(),
            drifted.join(", ")
        );
    }
    let (add, change, destroy) = plan.counts();
    let _ = writeln!(
        out,
        "\nPlan: {add} to add, {change} to change, {destroy} to destroy."
    );
    out
}

fn render_change(out: &mut String, change: &Change) {
    let sign = match change.action {
        Action::Add => '+',
        Action::Change => '~',
        Action::Remove => '-',
    };
    let mut notes = Vec::new();
    if change.sensitive {
        notes.push("(sensitive)".to_string());
    }
    match change.drift {
        Some(Drift::Edited) => notes.push("(edited by hand since the last apply)".into()),
        Some(Drift::Unmanaged) => notes.push("(exists, not written by dbward)".into()),
        None => {}
    }
    if let (Some(before), Some(after)) = (&change.before, &change.after)
        && before.mode != after.mode
    {
        notes.push(format!("(mode {:04o} -> {:04o})", before.mode, after.mode));
    }
    let _ = write!(out, "  {sign} {}", change.path);
    for note in &notes {
        let _ = write!(out, " {note}");
    }
    out.push('\n');
    if change.sensitive {
        return;
    }
    let (Some(before), Some(after)) = (&change.before, &change.after) else {
        return;
    };
    if before.bytes == after.bytes {
        return;
    }
    let (Ok(old), Ok(new)) = (
        std::str::from_utf8(&before.bytes),
        std::str::from_utf8(&after.bytes),
    ) else {
        let _ = writeln!(out, "      (binary content changed)");
        return;
    };
    // A reissued certificate's PEM diff is noise; say what happened instead.
    if old.starts_with("-----BEGIN CERTIFICATE-----")
        && new.starts_with("-----BEGIN CERTIFICATE-----")
    {
        let _ = writeln!(out, "      (certificate reissued{})", cert_change(old, new));
        return;
    }
    let diff = TextDiff::from_lines(old, new);
    let text = diff
        .unified_diff()
        .context_radius(CONTEXT)
        .header(&format!("a/{}", change.path), &format!("b/{}", change.path))
        .to_string();
    for line in text.lines() {
        let _ = writeln!(out, "      {line}");
    }
}

/// What differs between two PEM certificates, for a reviewer: `": names a, b -> a, b, c"`,
/// `": new issuer"`, `": renewal, the old one expires 2027-01-01"`; empty when unreadable.
fn cert_change(old: &str, new: &str) -> String {
    struct Facts {
        subject: String,
        names: Vec<String>,
        issuer_key: Option<Vec<u8>>,
        issuer: String,
        not_after: String,
    }
    fn facts(pem: &str) -> Option<Facts> {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        let cert = pem.parse_x509().ok()?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|name| match name {
                        GeneralName::DNSName(dns) => (*dns).to_string(),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip)
                                .map(|b| std::net::IpAddr::from(b).to_string())
                                .unwrap_or_default(),
                            16 => <[u8; 16]>::try_from(*ip)
                                .map(|b| std::net::IpAddr::from(b).to_string())
                                .unwrap_or_default(),
                            _ => String::new(),
                        },
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let issuer_key = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            });
        Some(Facts {
            subject: cert.subject().to_string(),
            names,
            issuer_key,
            issuer: cert.issuer().to_string(),
            not_after: cert.validity().not_after.to_datetime().date().to_string(),
        })
    }
    let (Some(a), Some(b)) = (facts(old), facts(new)) else {
        return String::new();
    };
    let mut reasons = Vec::new();
    if a.subject != b.subject {
        reasons.push(format!("subject {} -> {}", a.subject, b.subject));
    }
    if a.names != b.names {
        reasons.push(format!(
            "names {} -> {}",
            a.names.join(", "),
            b.names.join(", ")
        ));
    }
    if a.issuer != b.issuer || a.issuer_key != b.issuer_key {
        reasons.push("new issuer".to_string());
    }
    if reasons.is_empty() {
        // Nothing it says changed: the renewal window opened, or its key was replaced.
        reasons.push(format!(
            "renewal or new key; the old one expires {}",
            a.not_after
        ));
    }
    format!(": {}", reasons.join("; "))
}
