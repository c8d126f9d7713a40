//! `dbward fmt FILE… [--check]`: rewrites manifests in canonical form, keeping comments.
//!
//! A file that is not valid KDL is refused with the same diagnostics `dbward check` prints and
//! is left untouched. Files are rewritten atomically (a temporary file in the same directory,
//! then a rename), so an interrupted `fmt` never leaves half a manifest. With `--check` nothing
//! is written: the command lists the files that would change, shows the diff, and exits 1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::check::{RENDER_WIDTH, use_color};
use crate::diag;
use crate::fmt::format;

/// Arguments of `dbward fmt`.
#[derive(Debug, Clone, clap::Args)]
pub struct FmtArgs {
    /// The manifests to format.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write nothing; exit 1 and show the diff when a file is not formatted.
    #[arg(long)]
    pub check: bool,
}

/// What formatting one file's text gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formatted {
    /// Already canonical.
    Unchanged,
    /// The canonical text, which differs from the file's.
    Changed(String),
    /// Not formatted: the rendered diagnostics (or error) say why.
    Refused(String),
}

/// Formats manifest bytes as `dbward fmt` would, without touching any file.
pub fn format_bytes(name: &str, bytes: Vec<u8>, color: bool) -> Formatted {
    let (source, diagnostics) = crate::syntax::decode(name, bytes);
    if !diagnostics.is_empty() {
        return Formatted::Refused(diag::render(&source, &diagnostics, RENDER_WIDTH, color));
    }
    // The front end's parser reports syntax errors exactly as `dbward check` does.
    let parsed = crate::syntax::parse(&source);
    if parsed.manifest.is_none() {
        return Formatted::Refused(diag::render(
            &source,
            &parsed.diagnostics,
            RENDER_WIDTH,
            color,
        ));
    }
    match format(&source.text) {
        Ok(text) if text == source.text => Formatted::Unchanged,
        Ok(text) => Formatted::Changed(text),
        Err(err) => Formatted::Refused(format!("error: {err}\n")),
    }
}

/// A unified diff from the file's text to its canonical form, for `--check`.
pub fn diff(name: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(name, &format!("{name} (formatted)"))
        .to_string()
}

/// Replaces `path` with `text` atomically: a temporary file in the same directory (so the
/// rename cannot cross file systems), with the original's permissions, renamed over it.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    // Through a symlink, replace the file it points to, not the link itself.
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let path = resolved.as_path();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!(
            "cannot create a temporary file in {}; check that the directory is writable",
            dir.display()
        )
    })?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

pub fn run(args: FmtArgs) -> anyhow::Result<ExitCode> {
    let color = use_color();
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for path in &args.files {
        let name = path.display().to_string();
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {name}; check the path"))?;
        let original = String::from_utf8_lossy(&bytes).into_owned();
        match format_bytes(&name, bytes, color) {
            Formatted::Unchanged => {}
            Formatted::Refused(why) => {
                eprint!("{why}");
                eprintln!("{name}: not formatted; fix the errors above and run `dbward fmt` again");
                failed = true;
            }
            Formatted::Changed(text) if args.check => {
                write!(stdout, "{}", diff(&name, &original, &text))?;
                eprintln!("{name}: would be reformatted; run `dbward fmt {name}`");
                failed = true;
            }
            Formatted::Changed(text) => {
                write_atomically(path, &text)?;
                eprintln!("{name}: formatted");
            }
        }
    }
    Ok(ExitCode::from(u8::from(failed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_kdl_is_refused_with_check_diagnostics() {
        let out = format_bytes("m.kdl", b"dbward version=1\nrelay \"open\n".to_vec(), false);
        let Formatted::Refused(why) = out else {
            panic!("expected a refusal, got {out:?}");
        };
        assert!(why.contains("dbward::kdl_syntax"), "{why}");
    }

    #[test]
    fn kdl1_habits_and_bad_bytes_are_refused() {
        for bytes in [&b"a true\n"[..], b"a \xff\n"] {
            let out = format_bytes("m.kdl", bytes.to_vec(), false);
            assert!(matches!(out, Formatted::Refused(_)), "{out:?}");
        }
    }

    #[test]
    fn changed_and_unchanged() {
        let out = format_bytes("m.kdl", b"a   1\n".to_vec(), false);
        assert_eq!(out, Formatted::Changed("a 1\n".into()));
        assert_eq!(
            format_bytes("m.kdl", b"a 1\n".to_vec(), false),
            Formatted::Unchanged
        );
    }

    #[test]
    fn atomic_write_replaces_the_file_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.kdl");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // Only the manifest is left: the temporary file was renamed, not copied.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // Through a symlink, the target is rewritten and the link stays a link.
        let link = dir.path().join("link.kdl");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        write_atomically(&link, "newer\n").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer\n");
    }
}
