//! A fast path for the common shape of KDL 2.0 manifests.
//!
//! The `kdl` crate's parser recovers from errors and keeps every byte of formatting, which costs
//! about a microsecond per byte — most of `dbward check`'s time on a large manifest. Manifests
//! almost always use a small part of KDL: bare and quoted strings, decimal integers, `#true`,
//! `#false`, `#null`, blocks, `;`, and comments. This parser reads exactly that part, straight
//! into the AST, and **gives up (returns `None`) on anything else** — raw or multi-line strings,
//! slashdash, type annotations, other numbers, unusual whitespace, and every error — so that the
//! `kdl` crate handles it, including every diagnostic. It never accepts what the `kdl` crate
//! rejects, and produces the same AST (spans included) for what both accept; the differential
//! tests below hold it to that.

use super::ast::{Data, Ident, Manifest, Node, Prop, Value};
use crate::diag::Span;

/// Parses `text` if it stays within the fast subset; `None` means "ask the `kdl` crate".
/// The caller has already bounded the nesting depth.
pub fn parse(text: &str) -> Option<Manifest> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    if text.starts_with('\u{feff}') {
        p.pos = 3;
    }
    let nodes = p.nodes(false)?;
    (p.pos == p.bytes.len()).then(|| Manifest {
        nodes,
        span: Span::new(0, text.len()),
    })
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// Characters that end a bare identifier (besides whitespace and newlines).
fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'\\' | b'/' | b'(' | b')' | b'{' | b'}' | b';' | b'[' | b']' | b'=' | b'"' | b'#'
    )
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek2(&self) -> Option<u8> {
        self.bytes.get(self.pos + 1).copied()
    }

    /// Skips spaces, tabs and `/* … */` comments (node-space without line continuations).
    /// Returns whether anything was skipped, or `None` on an unterminated comment.
    fn inline_space(&mut self) -> Option<bool> {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.pos += 1,
                Some(b'/') if self.peek2() == Some(b'*') => self.block_comment()?,
                _ => return Some(self.pos > start),
            }
        }
    }

    fn block_comment(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match (self.peek()?, self.peek2()) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return Some(());
                    }
                }
                // Comments may hold any text, but not the code points KDL disallows.
                (b, _) if b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r' => return None,
                (b'\r', next) if next != Some(b'\n') => return None,
                (b, _) if b >= 0x80 => {
                    let c = self.text[self.pos..].chars().next()?;
                    if disallowed(c) {
                        return None;
                    }
                    self.pos += c.len_utf8();
                }
                _ => self.pos += 1,
            }
        }
    }

    /// A newline (`\n` or `\r\n`); returns whether one was consumed.
    fn newline(&mut self) -> bool {
        match (self.peek(), self.peek2()) {
            (Some(b'\n'), _) => {
                self.pos += 1;
                true
            }
            (Some(b'\r'), Some(b'\n')) => {
                self.pos += 2;
                true
            }
            _ => false,
        }
    }

    /// A `// …` comment up to (not including) the newline.
    fn line_comment(&mut self) -> Option<()> {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => return Some(()),
                b'\r' if self.peek2() == Some(b'\n') => return Some(()),
                b'\r' => return None,
                b if b < 0x20 && b != b'\t' => return None,
                b if b >= 0x80 => {
                    let c = self.text[self.pos..].chars().next()?;
                    if disallowed(c) || is_unicode_newline(c) {
                        return None;
                    }
                    self.pos += c.len_utf8();
                }
                _ => self.pos += 1,
            }
        }
        Some(())
    }

    /// Whitespace, newlines, comments and `;` between nodes... except that a `;` is only
    /// allowed right after a node (checked by the caller).
    fn line_space(&mut self) -> Option<()> {
        loop {
            self.inline_space()?;
            if self.newline() {
                continue;
            }
            if self.peek() == Some(b'/') && self.peek2() == Some(b'/') {
                self.line_comment()?;
                continue;
            }
            return Some(());
        }
    }

    /// Nodes until the end of the text, or until a `}` when `in_block`.
    fn nodes(&mut self, in_block: bool) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        loop {
            self.line_space()?;
            match self.peek() {
                None if !in_block => return Some(nodes),
                None => return None,
                Some(b'}') if in_block => return Some(nodes),
                _ => {}
            }
            let node = self.node(in_block)?;
            nodes.push(node);
        }
    }

    fn node(&mut self, in_block: bool) -> Option<Node> {
        let start = self.pos;
        let name = self.string()?;
        let mut args = Vec::new();
        let mut props = Vec::new();
        let mut children = None;
        loop {
            let spaced = self.inline_space()?;
            match self.peek() {
                None => break,
                Some(b'\n') => break,
                Some(b'\r') if self.peek2() == Some(b'\n') => break,
                Some(b';') => break,
                Some(b'/') if self.peek2() == Some(b'/') => break,
                Some(b'}') if in_block => break,
                Some(b'{') => {
                    self.pos += 1;
                    let nodes = self.nodes(true)?;
                    // `nodes` stopped at the closing brace.
                    self.pos += 1;
                    children = Some(nodes);
                    self.inline_space()?;
                    match self.peek() {
                        None | Some(b'\n' | b';') => break,
                        Some(b'\r') if self.peek2() == Some(b'\n') => break,
                        Some(b'/') if self.peek2() == Some(b'/') => break,
                        Some(b'}') if in_block => break,
                        _ => return None,
                    }
                }
                Some(_) if !spaced => return None,
                Some(_) => {
                    let entry_start = self.pos;
                    let first = self.value_or_key()?;
                    if self.peek() == Some(b'=') {
                        // A property: the key must have been a string.
                        let Data::String(key) = first.data else {
                            return None;
                        };
                        self.pos += 1;
                        let value = self.value_or_key()?;
                        props.push(Prop {
                            name: Ident {
                                text: key,
                                span: first.span,
                            },
                            span: Span::new(entry_start, value.span.end),
                            value,
                        });
                    } else {
                        args.push(first);
                    }
                }
            }
        }
        let end = self.pos;
        if self.peek() == Some(b';') {
            self.pos += 1;
        }
        Some(Node {
            name,
            ty: None,
            args,
            props,
            children,
            span: Span::new(start, end),
        })
    }

    /// A value (string, integer, `#true`/`#false`/`#null`), which may turn out to be a key.
    fn value_or_key(&mut self) -> Option<Value> {
        let start = self.pos;
        let data = match self.peek()? {
            b'#' => {
                let rest = &self.bytes[self.pos..];
                let (data, len) = if rest.starts_with(b"#true") {
                    (Data::Bool(true), 5)
                } else if rest.starts_with(b"#false") {
                    (Data::Bool(false), 6)
                } else if rest.starts_with(b"#null") {
                    (Data::Null, 5)
                } else {
                    return None;
                };
                self.pos += len;
                data
            }
            b'0'..=b'9' => self.integer(false)?,
            b'-' | b'+' if self.peek2().is_some_and(|b| b.is_ascii_digit()) => {
                let negative = self.peek() == Some(b'-');
                self.pos += 1;
                self.integer(negative)?
            }
            _ => {
                let ident = self.string()?;
                return Some(Value {
                    data: Data::String(ident.text),
                    ty: None,
                    span: ident.span,
                });
            }
        };
        // A value must end at a delimiter; `5432abc` or `#truex` is not ours to judge.
        match self.peek() {
            None | Some(b' ' | b'\t' | b'\n' | b'\r' | b';' | b'}' | b'{' | b'/') => {}
            _ => return None,
        }
        Some(Value {
            data,
            ty: None,
            span: Span::new(start, self.pos),
        })
    }

    /// Decimal digits only (no `_`, `.`, exponent or radix prefix: those go to the `kdl` crate).
    fn integer(&mut self, negative: bool) -> Option<Data> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = &self.text[start..self.pos];
        let n: i128 = digits.parse().ok()?;
        Some(Data::Integer(if negative { -n } else { n }))
    }

    /// A bare identifier or a single-line quoted string.
    fn string(&mut self) -> Option<Ident> {
        let start = self.pos;
        let text = if self.peek()? == b'"' {
            self.quoted()?
        } else {
            self.bare()?
        };
        Some(Ident {
            text,
            span: Span::new(start, self.pos),
        })
    }

    fn bare(&mut self) -> Option<String> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b >= 0x80 {
                // Non-ASCII identifiers are left to the `kdl` crate's exact rules.
                return None;
            }
            if b <= b' ' || b == 0x7f || is_delimiter(b) {
                break;
            }
            self.pos += 1;
        }
        let word = &self.text[start..self.pos];
        let bytes = word.as_bytes();
        let looks_numeric = match bytes {
            [] => return None,
            [b'0'..=b'9', ..] => true,
            [b'-' | b'+', b'0'..=b'9', ..] => true,
            [b'.', b'0'..=b'9', ..] => true,
            [b'-' | b'+', b'.', b'0'..=b'9', ..] => true,
            _ => false,
        };
        if looks_numeric || matches!(word, "true" | "false" | "null" | "inf" | "-inf" | "nan") {
            return None;
        }
        Some(word.to_string())
    }

    fn quoted(&mut self) -> Option<String> {
        // `"""` opens a multi-line string: not ours.
        if self.bytes[self.pos..].starts_with(b"\"\"\"") {
            return None;
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let run = rest
                .find(|c: char| {
                    c == '"'
                        || c == '\\'
                        || c.is_control()
                        || disallowed(c)
                        || is_unicode_newline(c)
                })
                .unwrap_or(rest.len());
            out.push_str(&rest[..run]);
            self.pos += run;
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    let escaped = match self.peek2()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b's' => ' ',
                        // `\u{…}`, whitespace escapes and anything else: the `kdl` crate decides.
                        _ => return None,
                    };
                    out.push(escaped);
                    self.pos += 2;
                }
                // A tab is a legal character in a string; other controls, newlines and
                // disallowed code points are not ours to judge.
                b'\t' => {
                    out.push('\t');
                    self.pos += 1;
                }
                _ => return None,
            }
        }
    }
}

/// Code points KDL 2.0 forbids anywhere in a document (outside a leading BOM).
fn disallowed(c: char) -> bool {
    matches!(c,
        '\u{feff}'
        | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
        || (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// Newlines KDL 2.0 knows besides `\n` and `\r\n` (left to the `kdl` crate).
fn is_unicode_newline(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{b}' | '\u{c}' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    /// The fast path either declines or agrees with the `kdl` crate exactly.
    #[track_caller]
    fn agrees(text: &str) -> bool {
        let fast = parse(text);
        let slow = kdl::KdlDocument::parse_v2(text)
            .ok()
            .map(|doc| super::super::lower(&doc, text));
        match (&fast, &slow) {
            (Some(f), Some(s)) => {
                assert_eq!(f, s, "different AST for {text:?}");
                true
            }
            (Some(_), None) => panic!("fast path accepted what kdl rejects: {text:?}"),
            (None, _) => false,
        }
    }

    #[test]
    fn reference_and_examples_take_the_fast_path() {
        assert!(agrees(include_str!("../model/testdata/reference.kdl")));
        let crlf = include_str!("../model/testdata/reference.kdl").replace('\n', "\r\n");
        assert!(agrees(&crlf));
        assert!(agrees(&format!("\u{feff}{crlf}")));
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(examples).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(
                agrees(&text),
                "{} left the fast path",
                entry.path().display()
            );
        }
    }

    #[test]
    fn fixtures_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check/bad");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "kdl") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                agrees(&text);
            }
        }
    }

    #[test]
    fn edge_cases_agree() {
        let cases = [
            "",
            "\n",
            "a",
            "a;",
            "a 1;",
            "a 1 ; b",
            "a 1;;b",
            "a 1 // c\nb",
            "a{}",
            "a {}",
            "a{ }",
            "a \"x\"{ b; }",
            "a 1 /* c */ 2",
            "a {\n}  // x\n",
            "  a  1  \n",
            "a { b }",
            "a { b; }",
            "a x=1\n",
            "a x = 1",
            "a x=",
            "a =1",
            "\"a\\\"b\" 1",
            "a \"\\u{41}\"",
            "a \"\\/\"",
            "a \"\\s\\t\\n\"",
            "a \"tab\there\"",
            "a \"é\"",
            "é 1",
            "a é",
            "a 1x",
            "a 1.5",
            "a 0x10",
            "a 1_000",
            "a -1",
            "a +1",
            "a -x",
            "a .x",
            "a .1",
            "a -.1",
            "a true",
            "a #true",
            "a #truex",
            "a #nan",
            "a #inf",
            "a null",
            "a #null",
            "a inf",
            "a (t)1",
            "(t)a",
            "a r\"x\"",
            "a #\"x\"#",
            "a \"\"\"\nx\n\"\"\"",
            "a /- b",
            "/- a\nb",
            "a \\\n b",
            "a\rb",
            "a\u{85}b",
            "a\u{2028}b",
            "a \"x\u{2028}y\"",
            "a \"\u{200e}\"",
            "a\u{feff}",
            "a { b } c",
            "a { b }c",
            "a {",
            "a }",
            "}",
            "a { b { c } }",
            "a 1{b}",
            "a x=#false y=\"z\"",
            "a\tb",
            "a b=c=d",
            "a \"b\"=c",
            "a 99999999999999999999999999999999999999999999",
            "a -0",
            "a 007",
            "a [",
            "a ]",
            "a b\\c",
            "a b/c",
            "a b(c",
            "a /* x */",
            "a /* /* */ */ 1",
            "a /* x",
            "a // \u{1}",
            "a \"\u{1}\"",
            "a \u{7f}",
            "// only\n",
            "/* only */",
            "a 1 ;",
            "a ;b",
            "a\n;b",
            "  ;",
            "a {\n  b 1\n  c x=2 {\n    d\n  }\n}\n",
            "a -",
            "a --x",
            "a +",
            "a .",
            "a ..",
            "a -.",
            "a *",
            "a ,",
            "a '",
            "a <>",
            "a ~!$%^&",
            "a |",
            "a `x`",
            "a ?",
            "- 1",
            "+ 1",
            "* x",
            "a x=-",
            "a x=*",
            "a \"\"",
            "\"\" 1",
            "a \"x\" \"y\"z",
            "a x=1x",
            "a x=\"1\"",
            "a -0x1",
            "a 1e5",
            "a 1E5",
            "a 1.0",
            "a #-inf",
            "a x=#true",
            "a #true=1",
            "a 1=2",
            "a \"k\"=#null",
            "a\t\t1",
            "a\u{a0}1",
            "a\u{3000}1",
            "a \"\\u{0}\"",
            "a /**/1",
            "a/**/1",
            "a{b}",
            "a{b;c}",
            "a { /* } */ }",
            "a // }\n",
            "a \"}\"",
            "a {\r\n}\r\n",
            "a\r\n\r\nb",
        ];
        for case in cases {
            agrees(case);
        }
    }

    /// A small deterministic generator (linear congruential).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as usize % n
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.next(from.len())]
        }

        /// A node in the fast subset's shape, with children down to `depth`.
        fn node(&mut self, out: &mut String, depth: usize, indent: usize) {
            const NAMES: &[&str] = &["a", "db-user", "\"q s\"", "x.y", "@z", "-w", "\"é\"", "k,l"];
            const VALUES: &[&str] = &[
                "1",
                "-2",
                "+3",
                "#true",
                "#false",
                "#null",
                "v",
                "\"v w\"",
                "\"e\\\"\"",
                "\"t\\n\"",
                "0",
                "12345678901234567890",
            ];
            const SPACES: &[&str] = &[" ", "  ", "\t", " /* c */ "];
            const ENDS: &[&str] = &["\n", "\r\n", ";\n", " // c\n", ";", " \n"];
            out.push_str(&" ".repeat(indent));
            out.push_str(self.pick(NAMES));
            for _ in 0..self.next(4) {
                out.push_str(self.pick(SPACES));
                if self.next(2) == 0 {
                    out.push_str(self.pick(&["k", "key", "\"q k\""]));
                    out.push('=');
                }
                out.push_str(self.pick(VALUES));
            }
            if depth > 0 && self.next(3) == 0 {
                out.push_str(self.pick(&[" {\n", "{\n", " { "]));
                for _ in 0..self.next(3) {
                    self.node(out, depth - 1, indent + 4);
                }
                out.push_str(&" ".repeat(indent));
                out.push('}');
            }
            out.push_str(self.pick(ENDS));
        }
    }

    #[test]
    fn generated_documents_agree() {
        // Documents in the fast subset's shape, half of them with one byte range replaced by a
        // piece of KDL the fast path may or may not accept, so that both the accepting and the
        // declining paths are compared with the `kdl` crate.
        const NOISE: &[&str] = &[
            "=", "{", "}", ";", "#", "\"", "1.5", "(t)", "/-", "\\", "é", "r\"x\"", "true", "\r",
            "/*", "//", " ", "0x1", "1_0", "\"\"\"", "\u{200e}", "#inf", "-", ".5",
        ];
        let mut g = Gen(7);
        let mut accepted = 0;
        for round in 0..4_000 {
            let mut doc = String::new();
            for _ in 0..1 + g.next(4) {
                g.node(&mut doc, 2, 0);
            }
            if round % 2 == 1 && !doc.is_empty() {
                let at = g.next(doc.len());
                if doc.is_char_boundary(at) {
                    let noise = g.pick(NOISE);
                    doc.insert_str(at, noise);
                }
            }
            if super::super::check_depth(&doc).is_none() && agrees(&doc) {
                accepted += 1;
            }
        }
        assert!(
            accepted > 1_000,
            "the generator exercises the fast path ({accepted})"
        );
    }

    #[test]
    fn parse_uses_the_fast_path_and_falls_back() {
        let source = Source::new("t.kdl", "a r\"x\"\n");
        assert_eq!(
            super::super::parse(&source).diagnostics[0].code,
            "dbward::kdl_v1_syntax"
        );
        let source = Source::new("t.kdl", "a #\"raw\"#\n");
        let parsed = super::super::parse(&source);
        assert_eq!(
            parsed
                .manifest
                .map(|m| m.nodes[0].args[0].as_str().map(str::to_string)),
            Some(Some("raw".into()))
        );
    }
}
