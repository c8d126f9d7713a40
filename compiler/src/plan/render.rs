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
        let _ = writeln!(out, "      (certificate reissued)");
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
