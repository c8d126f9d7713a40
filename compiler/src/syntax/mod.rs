//! Syntax: manifest text ([`Source`]) to a spanned [`ast::Manifest`], plus diagnostics.
//!
//! The KDL 2.0 grammar itself is the `kdl` crate's; this module guards it against hostile input
//! (a nesting-depth pre-scan, because the parser is recursive, and a parse thread with a known
//! stack), turns its errors into [`Diagnostic`]s — explaining KDL 1.0 habits such as bare `true` —
//! and lowers the document into the AST. What the *language* accepts is decided later, against
//! [`vocabulary()`], by the model's rules.

pub mod ast;
mod vocabulary;

pub use vocabulary::{
    ArgSpec, Block, ChildIndex, NodeSpec, OBJECT_KINDS, PRIVILEGES, PROVISION_MODES, PropSpec,
    ValueKind, child_spec, children_of, spec, vocabulary,
};

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};

use crate::diag::{Diagnostic, Span};
use crate::source::Source;

/// The deepest `{ … }` nesting accepted. The language needs three levels; anything far deeper is
/// a mistake or an attack on the recursive parser, and is refused before parsing.
pub const MAX_DEPTH: usize = 32;

/// How many KDL syntax errors are reported before the rest are summarized: a file of junk
/// produces thousands, and the first few say everything.
const MAX_SYNTAX_ERRORS: usize = 20;

/// The deepest nesting of `{` counted without regard to strings and comments. The careful scan
/// can disagree with the parser about where a malformed string or comment ends, and the parser
/// recovers from errors and keeps going; this cruder bound keeps even that case far from the
/// stack's limit. Real manifests never come near it.
pub const MAX_RAW_DEPTH: usize = 200;

/// Stack for the parse thread: generous, so the depth limit and not the stack decides.
const PARSE_STACK: usize = 64 * 1024 * 1024;

/// The result of parsing: the AST when the text is well-formed KDL, and every diagnostic.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub manifest: Option<ast::Manifest>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Turns file bytes into a [`Source`]. Text that is not UTF-8 is decoded lossily (so it can still
/// be shown) and reported as `dbward::not_utf8`, which is an error.
pub fn decode(name: impl Into<String>, bytes: Vec<u8>) -> (Source, Vec<Diagnostic>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Source::new(name, text), Vec::new()),
        Err(err) => {
            let at = err.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(err.as_bytes()).into_owned();
            let diag = Diagnostic::error("dbward::not_utf8", "the manifest is not UTF-8 text")
                .label(Span::new(at, at + 1), "this byte is not valid UTF-8")
                .help("save the file as UTF-8 (KDL documents are always UTF-8)");
            (Source::new(name, text), vec![diag])
        }
    }
}

/// Parses a manifest's KDL into the AST. Never panics; every problem becomes a diagnostic.
pub fn parse(source: &Source) -> Parsed {
    let text = source.text.as_str();
    if let Some(diag) = check_depth(text) {
        return Parsed {
            manifest: None,
            diagnostics: vec![diag],
        };
    }
    let result = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("dbward-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, || KdlDocument::parse_v2(text));
        match spawned {
            Ok(handle) => handle.join().ok(),
            // No thread could be started (resource limits): parse here, the depth is bounded.
            Err(_) => std::panic::catch_unwind(|| KdlDocument::parse_v2(text)).ok(),
        }
    });
    match result {
        Some(Ok(doc)) => Parsed {
            manifest: Some(lower(&doc, text)),
            diagnostics: Vec::new(),
        },
        Some(Err(err)) => Parsed {
            manifest: None,
            diagnostics: kdl_errors(text, &err),
        },
        // The parser panicked: report, never crash.
        None => Parsed {
            manifest: None,
            diagnostics: vec![
                Diagnostic::error(
                    "dbward::kdl_syntax",
                    "the KDL parser could not read this file",
                )
                .help("check that the file is a KDL 2.0 document"),
            ],
        },
    }
}

/// Refuses input nested deeper than [`MAX_DEPTH`] (counting braces outside strings and
/// comments) or [`MAX_RAW_DEPTH`] (counting every brace), so the recursive KDL parser never
/// sees it.
fn check_depth(text: &str) -> Option<Diagnostic> {
    check_careful_depth(text).or_else(|| check_raw_depth(text))
}

/// The context-free bound ([`MAX_RAW_DEPTH`]).
fn check_raw_depth(text: &str) -> Option<Diagnostic> {
    let bytes = text.as_bytes();
    let mut raw = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => {
                raw += 1;
                if raw > MAX_RAW_DEPTH {
                    return Some(
                        Diagnostic::error(
                            "dbward::too_deep",
                            format!("more than {MAX_RAW_DEPTH} `{{` are open at once"),
                        )
                        .label(Span::new(i, i + 1), "too deep here")
                        .help(
                            "the manifest language nests at most three blocks deep; look for \
                             missing `}` or an unterminated string or comment",
                        ),
                    );
                }
            }
            b'}' => raw = raw.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The bound that skips strings and comments ([`MAX_DEPTH`]).
fn check_careful_depth(text: &str) -> Option<Diagnostic> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut comment_depth = 0usize;
    let mut i = 0;
    let too_deep = |at: usize, what: &str| {
        Diagnostic::error(
            "dbward::too_deep",
            format!("{what} are nested more than {MAX_DEPTH} levels deep"),
        )
        .label(Span::new(at, at + 1), "too deep here")
        .help(
            "the manifest language nests at most three blocks deep; look for a missing `}` or `*/`",
        )
    };
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        if comment_depth > 0 {
            if b == b'/' && next == Some(b'*') {
                comment_depth += 1;
                if comment_depth > MAX_DEPTH {
                    return Some(too_deep(i, "comments"));
                }
                i += 2;
            } else if b == b'*' && next == Some(b'/') {
                comment_depth -= 1;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        match b {
            b'/' if next == Some(b'/') => {
                i = memchr(bytes, i, b'\n');
            }
            b'/' if next == Some(b'*') => {
                comment_depth = 1;
                i += 2;
            }
            b'"' => i = skip_string(bytes, i, 0),
            b'#' => {
                let hashes = bytes[i..].iter().take_while(|&&c| c == b'#').count();
                if bytes.get(i + hashes) == Some(&b'"') {
                    i = skip_string(bytes, i + hashes, hashes);
                } else {
                    i += hashes;
                }
            }
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(too_deep(i, "blocks"));
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Index of the next `needle` at or after `from`, or the end.
fn memchr(bytes: &[u8], from: usize, needle: u8) -> usize {
    bytes[from..]
        .iter()
        .position(|&c| c == needle)
        .map_or(bytes.len(), |p| from + p)
}

/// Skips a string starting at the opening quote `bytes[at]`. `hashes > 0` is a raw string
/// (`#"…"#`), which has no escapes. A single-line string also ends at a newline, so an
/// unterminated one does not swallow the rest of the file (the parser reports it).
fn skip_string(bytes: &[u8], at: usize, hashes: usize) -> usize {
    let multi = bytes[at..].starts_with(b"\"\"\"");
    let mut i = at + if multi { 3 } else { 1 };
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if hashes == 0 => i += 2,
            b'\n' if !multi => return i,
            b'"' => {
                let closing = if multi {
                    bytes[i..].starts_with(b"\"\"\"")
                } else {
                    true
                };
                let quote_len = if multi { 3 } else { 1 };
                let end_hashes = bytes[i + quote_len.min(bytes.len() - i)..]
                    .iter()
                    .take_while(|&&c| c == b'#')
                    .count();
                if closing && end_hashes >= hashes {
                    return i + quote_len + hashes;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// A literal bidirectional control or byte order mark, which KDL 2.0 refuses anywhere in a
/// document: say which character it is (a terminal shows none of them) instead of the parser's
/// "expected quoted string". The same codes as the names rule (`model::rules::invisible_characters`).
fn hidden_literal(snippet: &str, span: Span) -> Option<Diagnostic> {
    use crate::source::{Hidden, hidden, hidden_name};
    let (c, what) = snippet.chars().find_map(|c| Some((c, hidden(c)?)))?;
    let name = hidden_name(c).unwrap_or("format character");
    let code = match what {
        Hidden::Bidi => "dbward::bidi_control",
        Hidden::Invisible => "dbward::invisible_character",
    };
    Some(
        Diagnostic::error(
            code,
            format!("the manifest holds a literal U+{:04X} {name}", c as u32),
        )
        .label(span, "here (shown as `?`)")
        .help(
            "delete it: KDL 2.0 does not allow it in a document, and it changes what editors and \
             reviews show",
        ),
    )
}

/// Turns the KDL parser's errors into diagnostics, recognizing KDL 1.0 habits.
fn kdl_errors(text: &str, err: &kdl::KdlError) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut dropped = 0usize;
    for d in &err.diagnostics {
        let span = Span::from(d.span);
        let span = Span::new(span.start.min(text.len()), span.end.min(text.len()));
        let snippet = text.get(span.start..span.end).unwrap_or("");
        let diag = hidden_literal(snippet, span)
            .or_else(|| kdl1_habit(snippet, span))
            .or_else(|| bad_escape(snippet, span))
            .or_else(|| unquoted(text, span))
            .unwrap_or_else(|| {
                let message = d
                    .message
                    .as_deref()
                    .map(lower_first)
                    .unwrap_or_else(|| "this is not valid KDL 2.0".into());
                let label = d
                    .label
                    .clone()
                    .unwrap_or_else(|| "here".into())
                    .replace("not ", "expected ");
                Diagnostic::error("dbward::kdl_syntax", message)
                    .label(span, label)
                    .help(d.help.as_deref().map(lower_first).unwrap_or_else(|| {
                        "fix the KDL syntax here; manifests are KDL 2.0 (https://kdl.dev)".into()
                    }))
            });
        // The parser often explains one spot twice ("expected a string", "invalid node
        // name"); the first explanation is the more precise one.
        if !seen.insert(diag.primary_span().unwrap_or(span)) {
            continue;
        }
        if out.len() >= MAX_SYNTAX_ERRORS {
            dropped += 1;
            continue;
        }
        out.push(diag);
    }
    // A block left "unclosed" or text left "after the document" is how the parser's recovery
    // reports the consequences of a value it could not read; once that value is explained, they
    // only add noise.
    if out.iter().any(|d| d.code != "dbward::kdl_syntax") {
        out.retain(|d| {
            d.code != "dbward::kdl_syntax"
                || !(d.message.contains("closing '}'") || d.message.contains("end of document"))
        });
    }
    crate::diag::sort(&mut out);
    if dropped > 0 {
        out.push(
            Diagnostic::error(
                "dbward::too_many_errors",
                format!("{dropped} more KDL syntax errors are not shown"),
            )
            .help("fix the errors above first; later ones are often consequences of them"),
        );
    }
    if out.is_empty() {
        out.push(
            Diagnostic::error("dbward::kdl_syntax", "this file is not valid KDL 2.0")
                .help("check the file's syntax; manifests are KDL 2.0 (https://kdl.dev)"),
        );
    }
    out
}

/// Recognizes KDL 1.0 spellings the 2.0 parser rejects, and says how to write them now.
fn kdl1_habit(snippet: &str, span: Span) -> Option<Diagnostic> {
    let word = snippet.trim();
    let (what, fix) = match word {
        "true" | "false" | "null" => (format!("`{word}`"), format!("#{word}")),
        "inf" | "-inf" | "nan" => (format!("`{word}`"), format!("#{word}")),
        _ if word.starts_with("r\"") || word.starts_with("r#") => {
            let body = word.trim_start_matches('r');
            let fixed = if body.starts_with('#') {
                body.to_string()
            } else {
                format!("#{body}#")
            };
            ("the raw string".to_string(), fixed)
        }
        _ => return None,
    };
    Some(
        Diagnostic::error(
            "dbward::kdl_v1_syntax",
            format!("{what} is KDL 1.0 syntax; manifests are KDL 2.0"),
        )
        .label(span, format!("write `{fix}`"))
        .help(format!(
            "in KDL 2.0, keywords start with `#` (#true, #false, #null) and raw strings are \
             written #\"…\"#: write `{fix}`"
        )),
    )
}

/// A quoted string the parser rejected because of an escape: names the escape and says how to
/// write it (`\/` is a KDL 1.0 escape; a lone `\` in a Windows path is the usual culprit).
fn bad_escape(snippet: &str, span: Span) -> Option<Diagnostic> {
    if !snippet.starts_with('"') || snippet.starts_with("\"\"\"") {
        return None;
    }
    let mut chars = snippet.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            return None;
        }
        if c != '\\' {
            continue;
        }
        let (_, next) = chars.next()?;
        if matches!(next, '"' | '\\' | 'n' | 'r' | 't' | 'b' | 'f' | 's' | 'u')
            || next.is_whitespace()
        {
            continue;
        }
        let at = Span::new(span.start + i, span.start + i + 1 + next.len_utf8());
        let diag = if next == '/' {
            Diagnostic::error(
                "dbward::kdl_v1_syntax",
                "`\\/` is a KDL 1.0 escape; manifests are KDL 2.0",
            )
            .label(at, "write `/`")
            .help("write a plain `/`: KDL 2.0 has no `\\/` escape")
        } else {
            Diagnostic::error(
                "dbward::kdl_syntax",
                format!("`\\{next}` is not an escape in a KDL string"),
            )
            .label(at, "unknown escape")
            .help(
                "write `\\\\` for a backslash (or use a raw string, #\"C:\\path\"#); the escapes \
                     are \\n \\r \\t \\\\ \\\" \\b \\f \\s and \\u{…}",
            )
        };
        return Some(diag);
    }
    None
}

/// A value that needed quotes (`listen 0.0.0.0:6432`, `config-dir /etc/x`): the parser sees a
/// broken number or a comment and reports something confusing; say what to write instead.
fn unquoted(text: &str, span: Span) -> Option<Diagnostic> {
    let snippet = text.get(span.start..span.end)?;
    if snippet.contains(|c: char| c.is_whitespace() || c == '"') {
        return None;
    }
    let is_word =
        |c: char| !c.is_whitespace() && !matches!(c, '"' | '=' | '{' | '}' | ';' | '(' | ')');
    let start = text.get(..span.start)?.trim_end_matches(is_word).len();
    let end = span.end.max(start);
    let end = end
        + text
            .get(end..)?
            .find(|c: char| !is_word(c))
            .unwrap_or(text.len() - end);
    let word = text.get(start..end)?;
    let starts_numeric = word.starts_with(|c: char| c.is_ascii_digit());
    let needs_quotes = !word.is_empty()
        && !word.starts_with("//")
        && !word.starts_with("/*")
        && !word.starts_with('#')
        && (word.contains(':')
            || word.contains('/')
            || (starts_numeric
                && (word.matches('.').count() > 1
                    || word.contains(|c: char| c.is_ascii_alphabetic()))));
    if !needs_quotes {
        return None;
    }
    Some(
        Diagnostic::error("dbward::unquoted_value", format!("`{word}` needs quotes"))
            .label(Span::new(start, end), format!("write \"{word}\""))
            .help("KDL reads only numbers and simple names without quotes; addresses, paths and versions are strings"),
    )
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Lowers a parsed KDL document into the AST (the document is at most [`MAX_DEPTH`] deep).
fn lower(doc: &KdlDocument, text: &str) -> ast::Manifest {
    ast::Manifest {
        nodes: doc.nodes().iter().map(|n| lower_node(n, text)).collect(),
        span: Span::new(0, text.len()),
    }
}

fn ident(id: &kdl::KdlIdentifier) -> ast::Ident {
    ast::Ident {
        text: id.value().to_string(),
        span: id.span().into(),
    }
}

fn lower_node(node: &KdlNode, text: &str) -> ast::Node {
    let mut args = Vec::new();
    let mut props = Vec::new();
    for entry in node.entries() {
        match entry.name() {
            Some(name) => {
                let name = ident(name);
                let entry_span: Span = entry.span().into();
                let value_span = prop_value_span(text, name.span, entry_span);
                props.push(ast::Prop {
                    value: lower_value(entry, value_span),
                    name,
                    span: entry_span,
                });
            }
            None => args.push(lower_value(entry, entry.span().into())),
        }
    }
    ast::Node {
        name: ident(node.name()),
        ty: node.ty().map(ident),
        args,
        props,
        children: node
            .children()
            .map(|doc| doc.nodes().iter().map(|n| lower_node(n, text)).collect()),
        span: node.span().into(),
    }
}

/// The span of a property's value: what follows `=` (and any whitespace) in `key=value`.
fn prop_value_span(text: &str, name: Span, entry: Span) -> Span {
    let rest = text.get(name.end..entry.end).unwrap_or("");
    let skip = rest
        .find('=')
        .map(|eq| {
            eq + 1
                + rest[eq + 1..]
                    .find(|c: char| !c.is_whitespace())
                    .unwrap_or(0)
        })
        .unwrap_or(0);
    Span::new(name.end + skip, entry.end)
}

fn lower_value(entry: &KdlEntry, span: Span) -> ast::Value {
    let data = match entry.value() {
        KdlValue::String(s) => ast::Data::String(s.clone()),
        KdlValue::Integer(i) => ast::Data::Integer(*i),
        KdlValue::Float(f) => ast::Data::Float(*f),
        KdlValue::Bool(b) => ast::Data::Bool(*b),
        KdlValue::Null => ast::Data::Null,
    };
    ast::Value {
        data,
        ty: entry.ty().map(ident),
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Parsed {
        parse(&Source::new("t.kdl", text))
    }

    #[test]
    fn spans_are_byte_offsets() {
        let parsed = parse_str("database é {\n  postgres port=5432\n}\n");
        let manifest = parsed.manifest.expect("parses");
        let db = &manifest.nodes[0];
        assert_eq!(db.first_str(), Some("é"));
        assert_eq!(db.args[0].span, Span::new(9, 11));
        let pg = &db.children()[0];
        let port = pg.prop("port").expect("port");
        assert_eq!(port.value.as_int(), Some(5432));
        let text = "database é {\n  postgres port=5432\n}\n";
        assert_eq!(&text[port.value.span.start..port.value.span.end], "5432");
    }

    #[test]
    fn bare_true_is_explained() {
        let parsed = parse_str("relay { audit \"a\" queries=true }\n");
        assert!(parsed.manifest.is_none());
        let d = &parsed.diagnostics[0];
        assert_eq!(d.code, "dbward::kdl_v1_syntax");
        assert!(d.help.as_deref().unwrap_or("").contains("#true"));
    }

    #[test]
    fn raw_string_is_explained() {
        let parsed = parse_str("node r\"abc\"\n");
        assert_eq!(parsed.diagnostics[0].code, "dbward::kdl_v1_syntax");
        assert!(parsed.diagnostics[0].labels[0].text.contains("#\"abc\"#"));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let parsed = parse_str(&"a {".repeat(10_000));
        assert_eq!(parsed.diagnostics.len(), 1);
        assert_eq!(parsed.diagnostics[0].code, "dbward::too_deep");
        let parsed = parse_str(&"/*".repeat(10_000));
        assert_eq!(parsed.diagnostics[0].code, "dbward::too_deep");
    }

    #[test]
    fn unterminated_strings_do_not_hide_nesting() {
        for open in ["a \"\"\"\n", "a #\"\n", "a /*\n", "a \"\n"] {
            let text = format!("{open}{}", "a {\n".repeat(10_000));
            let parsed = parse_str(&text);
            assert!(
                parsed
                    .diagnostics
                    .iter()
                    .any(|d| d.code == "dbward::too_deep"),
                "{open:?}: {:?}",
                parsed.diagnostics.first()
            );
        }
        // Just under the crude bound, the parser (which sees the nesting after its recovery)
        // still has stack to spare.
        let text = format!("a \"\"\"\n{}", "a {\n".repeat(MAX_RAW_DEPTH));
        assert!(parse_str(&text).manifest.is_none());
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        let text = format!(
            "a \"{}\" #\"{}\"# // {}\n/* {} */ b\n",
            "{".repeat(40),
            "{".repeat(40),
            "{".repeat(40),
            "{".repeat(40)
        );
        assert!(check_depth(&text).is_none());
    }

    #[test]
    fn not_utf8_is_reported_at_the_byte() {
        let (source, diags) = decode("x.kdl", b"dbward \xff\n".to_vec());
        assert_eq!(diags[0].code, "dbward::not_utf8");
        assert_eq!(diags[0].labels[0].span.start, 7);
        assert!(source.text.starts_with("dbward "));
    }
}
