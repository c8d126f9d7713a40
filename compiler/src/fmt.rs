//! Canonical formatting of a manifest (`dbward fmt`): one node per line, four-space indentation,
//! one space between entries, at most one blank line in a row — and every comment kept.
//!
//! The formatter works on the KDL document, not on the [`Model`](crate::model::Model), so it can
//! format a manifest that parses but does not yet check. Values, names and strings are printed
//! exactly as written (`"db.example.com"` stays quoted, `0xFF` stays hexadecimal); only the
//! whitespace between them changes, so a reviewer's diff after `dbward fmt` is layout only.
//!
//! kdl's own `KdlDocument::autoformat` is not used: it drops the blank lines that separate the
//! sections of a manifest and rewrites every value's spelling, which would make the reference
//! manifest itself "unformatted".
//!
//! **Invariant: formatting never changes meaning or drops a comment.** [`format`](fn@format) re-parses its
//! output and compares it with the input (the KDL data model, and every non-blank character
//! outside indentation); on any difference it refuses with [`FmtError::Unfaithful`] instead of
//! returning text that would be written to disk.

use kdl::{KdlDocument, KdlEntry, KdlNode};

/// One level of indentation.
const INDENT: &str = "    ";

/// Nesting deeper than this is refused before the KDL parser sees the text: the language never
/// nests more than four levels, and a pathological file (`a { a { a { …`) would otherwise
/// exhaust the parser's stack.
pub const MAX_NESTING: usize = 64;

/// Why a manifest could not be formatted.
#[derive(Debug, thiserror::Error)]
pub enum FmtError {
    /// The text is not a KDL 2.0 document; the manifest is left as it is.
    #[error("the manifest is not valid KDL; fix the errors above, then run `dbward fmt` again")]
    Parse(#[source] kdl::KdlError),
    /// Braces nest deeper than any manifest can.
    #[error(
        "the manifest nests more than {MAX_NESTING} levels deep (no dbward node nests more than \
         four); remove the extra `{{` blocks, then run `dbward fmt` again"
    )]
    TooDeep,
    /// The formatted text would differ from the input in more than layout. This is a bug in the
    /// formatter, caught before anything is written.
    #[error(
        "formatting would change the manifest's meaning or drop a comment ({0}); the file was \
         left untouched — please report this as a bug in `dbward fmt`"
    )]
    Unfaithful(&'static str),
}

/// Formats a manifest's text canonically. The result always ends with exactly one newline
/// (or is empty, for a document with neither nodes nor comments).
///
/// `format(&format(x)?)? == format(x)?` for every `x` that formats at all.
pub fn format(text: &str) -> Result<String, FmtError> {
    let original = parse(text)?;
    let mut printer = Printer {
        source: text,
        out: String::new(),
    };
    printer.block(&original, 0);
    let formatted = printer.out;

    // The guard of the module invariant: the output must parse to the same data and carry the
    // same characters (comments included), or nothing is returned.
    let reparsed = parse(&formatted).map_err(|_| FmtError::Unfaithful("output does not parse"))?;
    if data(&original) != data(&reparsed) {
        return Err(FmtError::Unfaithful("nodes or values differ"));
    }
    if squash(text) != squash(&formatted) {
        return Err(FmtError::Unfaithful("comments or spelling differ"));
    }
    Ok(formatted)
}

/// A bound on `{` nesting that ignores strings and comments: an unterminated string or comment
/// must not hide thousands of levels from the lexical scan, because kdl's parser keeps going
/// after an error and would recurse into them. Legitimate manifests stay far below it even with
/// braces inside strings.
const MAX_RAW_NESTING: usize = 4 * MAX_NESTING;

/// Parses KDL 2.0 text, refusing pathological nesting first.
fn parse(text: &str) -> Result<KdlDocument, FmtError> {
    if nesting_depth(text) > MAX_NESTING || raw_nesting_depth(text) > MAX_RAW_NESTING {
        return Err(FmtError::TooDeep);
    }
    text.parse::<KdlDocument>().map_err(FmtError::Parse)
}

/// Builds the canonical text, one node at a time.
struct Printer<'a> {
    /// The text that was parsed, for what kdl's format data loses (see [`Printer::node`]).
    source: &'a str,
    out: String,
}

impl Printer<'_> {
    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str(INDENT);
        }
    }

    /// The nodes of a document (top level or a children block) and the comments around them.
    fn block(&mut self, doc: &KdlDocument, depth: usize) {
        // Comments of a block with no node before them (e.g. only a slash-dashed node). A
        // byte-order mark is allowed by KDL but carries nothing; canonical files have none.
        let leading = doc.format().map_or("", |f| f.leading.as_str());
        self.comments(leading.trim_start_matches('\u{feff}'), depth, false);
        for (i, node) in doc.nodes().iter().enumerate() {
            let leading = node.format().map_or("", |f| f.leading.as_str());
            let blank_before = self.comments(leading, depth, i > 0);
            if blank_before {
                self.out.push('\n');
            }
            self.node(node, depth);
        }
        let trailing = doc.format().map_or("", |f| f.trailing.as_str());
        // Blank lines after the last comment of a block are dropped (the returned flag).
        self.comments(trailing, depth, !doc.nodes().is_empty());
    }

    /// Writes the comments (and slash-dashed nodes) of a node's leading text, one per line at
    /// `depth`. Runs of blank lines become one blank line; blank lines at the start of a block
    /// are dropped unless `blank_ok`. Returns whether a blank line separated the last comment
    /// (or the block start, when `blank_ok`) from what follows, so the caller can keep it.
    fn comments(&mut self, text: &str, depth: usize, blank_ok: bool) -> bool {
        let mut scan = Scan::default();
        let mut pending_blank = false;
        let mut wrote = false;
        let pieces: Vec<&str> = text.split('\n').collect();
        let last = pieces.len() - 1;
        for (i, line) in pieces.into_iter().enumerate() {
            if scan.block_comment > 0 {
                // Inside a multi-line block comment: keep the author's layout verbatim.
                self.out.push_str(line.trim_end());
                self.out.push('\n');
                scan.line(line);
                continue;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() {
                // The last piece is what precedes the node on its own line, not a line.
                pending_blank |= i < last;
                continue;
            }
            if pending_blank && (wrote || blank_ok) {
                self.out.push('\n');
            }
            pending_blank = false;
            // Lines of a slash-dashed node keep their nesting relative to it.
            let closing = usize::from(trimmed.starts_with('}'));
            self.indent(depth + scan.braces.saturating_sub(closing));
            self.out.push_str(trimmed);
            self.out.push('\n');
            wrote = true;
            scan.line(trimmed);
        }
        pending_blank && (wrote || blank_ok)
    }

    fn node(&mut self, node: &KdlNode, depth: usize) {
        self.indent(depth);
        let format = node.format();
        if let Some(ty) = node.ty() {
            self.out.push('(');
            self.out.push_str(&ty.to_string());
            self.out.push(')');
        }
        self.out.push_str(&node.name().to_string());
        for entry in node.entries() {
            let leading = entry.format().map_or("", |f| f.leading.as_str());
            self.separator(leading);
            self.out.push_str(&entry_text(entry));
            if let Some(trailing) = entry.format().map(|f| f.trailing.trim())
                && !trailing.is_empty()
            {
                self.out.push(' ');
                self.out.push_str(trailing);
            }
        }
        if let Some(children) = node.children() {
            let before = format.map_or("", |f| f.before_children.as_str());
            self.separator(before);
            if children.nodes().is_empty() && is_blank(&doc_comments(children)) {
                self.out.push_str("{}");
            } else {
                self.out.push_str("{\n");
                self.block(children, depth + 1);
                self.indent(depth);
                self.out.push('}');
            }
        }
        if let Some(format) = format {
            let terminator = format.terminator.trim().trim_start_matches(';');
            // kdl 6 drops a comment that follows a children block's `}` on the same line
            // (`} // note`) from its format data; it is still in the source.
            let mut lost = "";
            if node.children().is_some() && format.terminator.is_empty() {
                lost = comment_after_block(self.source, node.span().offset() + node.span().len());
            }
            for part in [
                &format.before_terminator,
                terminator,
                &format.trailing,
                lost,
            ] {
                let part = part.trim();
                if !part.is_empty() {
                    self.out.push(' ');
                    self.out.push_str(part);
                }
            }
        }
        self.out.push('\n');
    }

    /// The space before an entry or a children block: one space, unless the author put a
    /// comment or a slash-dashed entry there, which is kept as written.
    fn separator(&mut self, leading: &str) {
        let meaningful = leading.replace('\\', "");
        if is_blank(&meaningful) {
            self.out.push(' ');
        } else {
            self.out.push(' ');
            self.out.push_str(leading.trim_start());
            if !leading.ends_with(char::is_whitespace) {
                self.out.push(' ');
            }
        }
    }
}

/// The comments on the line after the `}` that ends a node whose span ends at `span_end`:
/// `} /* a */ // b` gives `/* a */ // b`.
fn comment_after_block(source: &str, span_end: usize) -> &str {
    let Some(brace) = source.get(..span_end).and_then(|s| s.rfind('}')) else {
        return "";
    };
    let rest = &source[brace + 1..];
    let mut end = 0;
    loop {
        let after = &rest[end..];
        let skipped = after.len() - after.trim_start_matches([' ', '\t']).len();
        let after = &after[skipped..];
        if after.starts_with("//") {
            end += skipped + after.find('\n').unwrap_or(after.len());
            break;
        } else if let Some(len) = block_comment_len(after) {
            end += skipped + len;
        } else {
            break;
        }
    }
    rest[..end].trim()
}

/// The length of the (nestable) block comment at the start of `text`, if it starts with one
/// and it is closed.
fn block_comment_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if !text.starts_with("/*") {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// An entry as written (`key=value`, `(type)value`), without the whitespace around it.
fn entry_text(entry: &KdlEntry) -> String {
    let mut entry = entry.clone();
    if let Some(format) = entry.format_mut() {
        format.leading.clear();
        format.trailing.clear();
        for gap in [
            &mut format.after_key,
            &mut format.after_eq,
            &mut format.after_ty,
            &mut format.before_ty_name,
            &mut format.after_ty_name,
        ] {
            // Whitespace around `=` and inside `( )` goes; a comment there stays.
            if is_blank(gap) {
                gap.clear();
            }
        }
    }
    entry.to_string()
}

/// The comment text stored on a document itself (its leading and trailing decoration).
fn doc_comments(doc: &KdlDocument) -> String {
    doc.format()
        .map(|f| format!("{}{}", f.leading, f.trailing))
        .unwrap_or_default()
}

fn is_blank(text: &str) -> bool {
    text.chars().all(char::is_whitespace)
}

/// Tracks, across the lines of a comment run (or a whole file), whether a `/* … */` or a string
/// is still open and how deep braces nest, so continuation lines are laid out correctly and
/// pathological nesting is caught before parsing.
#[derive(Default)]
struct Scan {
    block_comment: usize,
    /// Inside a string: `Some(0)` for a quoted string (with escapes), `Some(n)` for a raw string
    /// closed by `"` and `n` hashes.
    string: Option<usize>,
    braces: usize,
    /// The largest `braces` seen.
    deepest: usize,
}

impl Scan {
    fn line(&mut self, line: &str) {
        let bytes = line.as_bytes();
        let hashes_at = |at: usize| bytes[at..].iter().take_while(|b| **b == b'#').count();
        let mut i = 0;
        while i < bytes.len() {
            let next = bytes.get(i + 1).copied();
            if self.block_comment > 0 {
                match (bytes[i], next) {
                    (b'*', Some(b'/')) => {
                        self.block_comment -= 1;
                        i += 1;
                    }
                    (b'/', Some(b'*')) => {
                        self.block_comment += 1;
                        i += 1;
                    }
                    _ => {}
                }
            } else if let Some(hashes) = self.string {
                match bytes[i] {
                    b'\\' if hashes == 0 => i += 1,
                    b'"' if hashes_at(i + 1) >= hashes => {
                        self.string = None;
                        i += hashes;
                    }
                    _ => {}
                }
            } else {
                match (bytes[i], next) {
                    (b'/', Some(b'/')) => return,
                    (b'/', Some(b'*')) => {
                        self.block_comment += 1;
                        i += 1;
                    }
                    (b'"', _) => self.string = Some(0),
                    (b'#', _) => {
                        let hashes = hashes_at(i);
                        if bytes.get(i + hashes) == Some(&b'"') {
                            self.string = Some(hashes);
                        }
                        i += hashes;
                    }
                    (b'{', _) => {
                        self.braces += 1;
                        self.deepest = self.deepest.max(self.braces);
                    }
                    (b'}', _) => self.braces = self.braces.saturating_sub(1),
                    _ => {}
                }
            }
            i += 1;
        }
    }
}

/// The deepest `{` nesting of the text, skipping strings and comments. Lexical (it does not
/// validate anything), which is all a depth guard needs.
pub fn nesting_depth(text: &str) -> usize {
    let mut scan = Scan::default();
    // Line by line, so a `//` comment hides only the rest of its own line.
    for line in text.split('\n') {
        scan.line(line);
    }
    scan.deepest
}

/// The deepest nesting of `{` over `}` counting every byte, strings and comments included.
fn raw_nesting_depth(text: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for byte in text.bytes() {
        match byte {
            b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The KDL data model of a document — names, type annotations, values, children — without any
/// formatting, for comparing a document with its formatted self.
fn data(doc: &KdlDocument) -> String {
    let mut doc = doc.clone();
    doc.clear_format_recursive();
    // Debug output of the format-free tree: values compare exactly (no float re-rendering).
    let mut out = String::new();
    describe(&doc, &mut out);
    out
}

fn describe(doc: &KdlDocument, out: &mut String) {
    use std::fmt::Write as _;
    for node in doc.nodes() {
        let _ = write!(
            out,
            "({:?}){:?}",
            node.ty().map(|t| t.value()),
            node.name().value()
        );
        for entry in node.entries() {
            let _ = write!(
                out,
                " {:?}=({:?}){:?}",
                entry.name().map(|n| n.value()),
                entry.ty().map(|t| t.value()),
                entry.value()
            );
        }
        if let Some(children) = node.children() {
            out.push('{');
            describe(children, out);
            out.push('}');
        }
        out.push(';');
    }
}

/// Every character that is not layout: whitespace, `;` terminators, `\` line continuations and
/// a byte-order mark are dropped. Formatting must leave this sequence unchanged.
fn squash(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, ';' | '\\' | '\u{feff}'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats `input`, compares with `expected`, and checks that formatting is idempotent.
    #[track_caller]
    fn check(input: &str, expected: &str) {
        let formatted = format(input).unwrap();
        assert_eq!(formatted, expected, "formatted:\n{formatted}");
        let again = format(&formatted).unwrap();
        assert_eq!(again, formatted, "not idempotent");
    }

    #[test]
    fn indentation_spacing_and_blank_lines() {
        check(
            "dbward   version=1\n\n\n\nrelay{\n  listen    \"0.0.0.0:6432\"\n\t\tpublic-name \"x\"\n}\n\n\n",
            "dbward version=1\n\nrelay {\n    listen \"0.0.0.0:6432\"\n    public-name \"x\"\n}\n",
        );
    }

    #[test]
    fn comments_are_kept_and_reindented() {
        check(
            "// head\n\n/* block\n   comment */\nnode 1 \"two\" key=\"v\" {  // after brace\n  // inner\n  child ; other\n       /-dead node\n  last 0xFF \\\n     cont=1 // trailing\n}\n\n\n/-gone { x }\ntail // end\n// final\n",
            "// head\n\n/* block\n   comment */\nnode 1 \"two\" key=\"v\" {\n    // after brace\n    // inner\n    child\n    other\n    /-dead node\n    last 0xFF cont=1 // trailing\n}\n\n/-gone { x }\ntail // end\n// final\n",
        );
    }

    #[test]
    fn comments_after_a_closing_brace_are_kept() {
        check(
            "d {\n  e 1\n  // before close\n\n}   // after close\ng {\n    h\n} /* a */ /* b */\nf { x; }\n",
            "d {\n    e 1\n    // before close\n} // after close\ng {\n    h\n} /* a */ /* b */\nf {\n    x\n}\n",
        );
    }

    #[test]
    fn slashdashed_nodes_keep_their_shape() {
        check(
            "f {\n  /-g {\n      h 1\n      i { j }\n  }\n}\n",
            "f {\n    /-g {\n        h 1\n        i { j }\n    }\n}\n",
        );
    }

    #[test]
    fn line_continuations_are_joined_unless_they_carry_a_comment() {
        check("p \\\n  1 \\\n  2\n", "p 1 2\n");
        let with_comment = "p 1 \\ // why\n  2\n";
        check(with_comment, with_comment);
    }

    #[test]
    fn spelling_of_values_is_kept() {
        check(
            "n \"quoted\" bare 0xFF 1_000 #true r=#\"raw\"# (t)\"typed\"\n",
            "n \"quoted\" bare 0xFF 1_000 #true r=#\"raw\"# (t)\"typed\"\n",
        );
    }

    #[test]
    fn slashdashed_entries_and_children_stay() {
        check(
            "a 1 /-2 3\nb /-{ x }\nc {   }\n",
            "a 1 /-2 3\nb /-{ x }\nc {}\n",
        );
    }

    #[test]
    fn crlf_and_bom_become_plain_lines() {
        check("\u{feff}a 1\r\nb {\r\n  c\r\n}\r\n", "a 1\nb {\n    c\n}\n");
    }

    #[test]
    fn multiline_strings_keep_their_value() {
        let input =
            "a {\n        b \"\"\"\n          text\n            more\n          \"\"\"\n}\n";
        let formatted = format(input).unwrap();
        assert_eq!(format(&formatted).unwrap(), formatted);
    }

    #[test]
    fn empty_and_comment_only_documents() {
        check("", "");
        check("\n\n// only a comment\n\n", "// only a comment\n");
    }

    #[test]
    fn invalid_kdl_is_refused() {
        assert!(matches!(
            format("a \"unterminated\n"),
            Err(FmtError::Parse(_))
        ));
        assert!(matches!(format("a true\n"), Err(FmtError::Parse(_))));
    }

    /// Mutated manifests: formatting never panics, and whatever it formats is stable.
    #[test]
    fn mutated_manifests_never_panic_and_stay_stable() {
        let base = include_str!("../../examples/full.kdl");
        let pieces = [
            "{", "}", "\"", "/*", "*/", "//", "/-", ";", "\\", "\n", " ", "#", "=", "\"\"\"",
            "\r\n", "é", "(t)",
        ];
        // A fixed linear congruential generator: reproducible without a dependency.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |bound: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as usize) % bound.max(1)
        };
        let mut formatted_ok = 0;
        for _ in 0..150 {
            let mut text = base.to_string();
            for _ in 0..1 + next(3) {
                let mut at = next(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                if next(2) == 0 {
                    text.insert_str(at, pieces[next(pieces.len())]);
                } else {
                    let mut end = (at + 1 + next(4)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, "");
                }
            }
            match format(&text) {
                Ok(once) => {
                    formatted_ok += 1;
                    assert_eq!(format(&once).ok().as_deref(), Some(once.as_str()), "{text}");
                }
                Err(FmtError::Unfaithful(why)) => panic!("refused valid KDL ({why}):\n{text}"),
                Err(_) => {}
            }
        }
        assert!(
            formatted_ok > 50,
            "only {formatted_ok} mutants were valid KDL"
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing() {
        let deep = format!("{}{}", "a {".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(format(&deep), Err(FmtError::TooDeep)));
        assert_eq!(nesting_depth("a { b { c \"{{{\" } } // {{{{\n"), 2);
        // An unterminated string or comment must not hide the nesting from the guard.
        for opener in ["a \"\n", "/* \n", "a #\"\n"] {
            let hidden = format!("{opener}{}", "a {\n".repeat(10_000));
            assert!(
                matches!(format(&hidden), Err(FmtError::TooDeep)),
                "{opener}"
            );
        }
    }
}
