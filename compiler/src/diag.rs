//! Diagnostics: what the front end reports about a manifest, and how the CLI renders them.
//!
//! The front end never stops at the first problem: every phase returns its output together with
//! a `Vec<Diagnostic>`. Rendering happens only at the edge, with [`render`] (miette's graphical
//! report, colour optional so snapshots are stable) or [`to_json`] (CI annotations).

use std::fmt;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents,
    SourceCode, SourceSpan, SpanContents,
};
use serde_json::json;

use crate::source::Source;

/// A byte range in a [`Source`]'s text. `Copy`, unlike `Range<usize>`, so it travels cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start,
            end: end.max(start),
        }
    }

    /// An empty span at `offset`, for "something is missing here".
    pub fn at(offset: usize) -> Span {
        Span::new(offset, offset)
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl From<SourceSpan> for Span {
    fn from(span: SourceSpan) -> Span {
        Span::new(span.offset(), span.offset() + span.len())
    }
}

/// How bad a diagnostic is: errors make a manifest invalid, warnings do not (unless the CLI is
/// told `--deny-warnings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One labelled span of a diagnostic. The first label is the primary one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable code, `dbward::<snake_case>`; users search for it and CI filters on it.
    pub code: &'static str,
    pub severity: Severity,
    /// Starts lower-case; says what is wrong.
    pub message: String,
    /// Where, and what each place has to do with it. The first label is the primary location.
    pub labels: Vec<Label>,
    /// What to do about it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    /// Adds a label (the first one added is the primary location).
    pub fn label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The primary span, if the diagnostic has a location.
    pub fn primary_span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }
}

/// True when any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}

/// Sorts diagnostics by position (then code), so output follows the file top to bottom no matter
/// which rule found what first. Diagnostics without a location come first.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.primary_span().map(|s| s.start), a.code, &a.message).cmp(&(
            b.primary_span().map(|s| s.start),
            b.code,
            &b.message,
        ))
    });
}

/// How many bytes of a very long line a rendered snippet shows on either side of a label. A
/// 10 MB single-line file must not be printed back to the terminal.
const WINDOW: usize = 160;

/// Renders diagnostics with miette's graphical handler. Without colour the output is plain
/// Unicode text, stable enough for snapshot tests.
pub fn render(source: &Source, diags: &[Diagnostic], width: usize, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_links(false)
        .with_urls(false);
    let mut out = String::new();
    let text = sanitize(&source.text);
    let name = sanitize(&source.name);
    for diag in diags {
        let diag = &sanitized(diag);
        let report = Report {
            diag,
            source: Windowed {
                name: &name,
                text: &text,
            },
        };
        if handler.render_report(&mut out, &report).is_err() {
            // A report that cannot be drawn (it never should) still says what is wrong.
            out.push_str(&format!(
                "{}: {} [{}]\n",
                diag.severity.as_str(),
                diag.message,
                diag.code
            ));
        }
        out.push('\n');
    }
    out
}

/// Diagnostics as JSON for CI annotations: one object per diagnostic with 1-based line and
/// column (columns count characters, not bytes).
pub fn to_json(source: &Source, diags: &[Diagnostic]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = diags
        .iter()
        .map(|d| {
            let span = d.primary_span().unwrap_or_default();
            let (line, column) = line_column(&source.text, span.start);
            let (end_line, end_column) = line_column(&source.text, span.end);
            json!({
                "file": source.name,
                "line": line,
                "column": column,
                "end_line": end_line,
                "end_column": end_column,
                "code": d.code,
                "severity": d.severity.as_str(),
                "message": d.message,
                "help": d.help,
            })
        })
        .collect();
    serde_json::Value::Array(items)
}

/// 1-based line and character column of a byte offset (clamped into the text).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    // Editors do not show a byte-order mark, so it does not count as a column.
    let line_text = before[line_start..].trim_start_matches('\u{feff}');
    let column = line_text.chars().count() + 1;
    (line, column)
}

/// Replaces control characters (other than newline and tab) with `?`, byte for byte, so spans
/// stay valid and a manifest cannot send escape sequences to the terminal showing its errors.
/// Invisible and bidirectional characters ([`crate::source::hidden`]) are replaced too: the
/// snippet then shows where they are, and cannot be reordered on screen (Trojan Source).
fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n' && c != '\t' && c != '\r')
            || crate::source::hidden(c).is_some()
    };
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if bad(c) {
            out.extend(std::iter::repeat_n('?', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A copy of a diagnostic whose texts are safe to print.
fn sanitized(diag: &Diagnostic) -> Diagnostic {
    Diagnostic {
        message: sanitize(&diag.message).into_owned(),
        labels: diag
            .labels
            .iter()
            .map(|l| Label {
                span: l.span,
                text: sanitize(&l.text).into_owned(),
            })
            .collect(),
        help: diag.help.as_deref().map(|h| sanitize(h).into_owned()),
        ..diag.clone()
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn ceil_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset < text.len() && !text.is_char_boundary(offset) {
        offset += 1;
    }
    offset
}

/// Clamps a span into the text, on character boundaries, and shortens a very long one to its
/// first line, so a label over a 10 MB node stays readable.
fn clamp_span(text: &str, span: Span) -> SourceSpan {
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let mut end = ceil_char_boundary(text, span.end.min(text.len()).max(start));
    if end - start > WINDOW {
        let line_end = text[start..end].find('\n').map_or(end, |i| start + i);
        end = ceil_char_boundary(text, line_end.min(start + WINDOW));
    }
    SourceSpan::new(start.into(), end - start)
}

/// One diagnostic bound to its source, in the shape miette renders.
struct Report<'a> {
    diag: &'a Diagnostic,
    source: Windowed<'a>,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diag, f)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diag
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        if self.diag.labels.is_empty() {
            None
        } else {
            Some(&self.source)
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.diag.labels.is_empty() {
            return None;
        }
        let text = self.source.text;
        Some(Box::new(self.diag.labels.iter().enumerate().map(
            move |(i, label)| {
                let span = clamp_span(text, label.span);
                let text = (!label.text.is_empty()).then(|| label.text.clone());
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                }
            },
        )))
    }
}

/// The source as miette reads it, but showing at most [`WINDOW`] bytes around a span, so that
/// very long lines (junk files, minified input) do not flood the terminal.
struct Windowed<'a> {
    name: &'a str,
    text: &'a str,
}

impl SourceCode for Windowed<'_> {
    fn read_span<'b>(
        &'b self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'b> + 'b>, MietteError> {
        let text = self.text;
        let start = span.offset().min(text.len());
        let end = (span.offset() + span.len()).min(text.len()).max(start);
        // Whole lines (with the context miette asks for) when they are short; otherwise a
        // window of the label's own line.
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let mut context_start = line_start;
        for _ in 0..context_lines_before {
            if context_start == 0 {
                break;
            }
            context_start = text[..context_start - 1].rfind('\n').map_or(0, |i| i + 1);
        }
        let window_start = if start - context_start <= 4 * WINDOW {
            context_start
        } else {
            floor_char_boundary(text, line_start.max(start.saturating_sub(WINDOW)))
        };
        let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
        let mut context_end = line_end;
        for _ in 0..context_lines_after {
            if context_end >= text.len() {
                break;
            }
            context_end = text[context_end + 1..]
                .find('\n')
                .map_or(text.len(), |i| context_end + 1 + i);
        }
        let window_end = if context_end - end <= 4 * WINDOW {
            context_end
        } else {
            ceil_char_boundary(text, line_end.min(end + WINDOW))
        };
        let sub = &text[window_start..window_end];
        let inner_span = SourceSpan::new((start - window_start).into(), end - start);
        let inner = sub.read_span(&inner_span, context_lines_before, context_lines_after)?;
        // The window starts mid-file: shift what miette computed back to file coordinates.
        let base_line = text[..window_start].bytes().filter(|&b| b == b'\n').count();
        let base_col = window_start - text[..window_start].rfind('\n').map_or(0, |i| i + 1);
        let column = if inner.line() == 0 {
            inner.column() + base_col
        } else {
            inner.column()
        };
        let inner_offset = inner.span().offset();
        let inner_len = inner.span().len();
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.to_string(),
            inner.data(),
            SourceSpan::new((inner_offset + window_start).into(), inner_len),
            inner.line() + base_line,
            column,
            inner.line_count(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_code_label_and_help_without_colour() {
        let source = Source::new("m.kdl", "dbward version=2\n");
        let diag = Diagnostic::error("dbward::unknown_version", "unknown language version 2")
            .label(Span::new(7, 16), "this version")
            .help("write `dbward version=1`");
        let out = render(&source, &[diag], 80, false);
        assert!(out.contains("dbward::unknown_version"), "{out}");
        assert!(out.contains("m.kdl:1:8"), "{out}");
        assert!(out.contains("this version"), "{out}");
        assert!(out.contains("help: write `dbward version=1`"), "{out}");
        assert!(
            !out.contains('\u{1b}'),
            "no escape codes without colour: {out}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let source = Source::new("m.kdl", "dbward version=2\n");
        let diag = Diagnostic::warning("dbward::x", "m").label(Span::new(7, 16), "here");
        assert!(render(&source, std::slice::from_ref(&diag), 80, true).contains('\u{1b}'));
        assert!(!render(&source, &[diag], 80, false).contains('\u{1b}'));
    }

    #[test]
    fn control_characters_are_not_sent_to_the_terminal() {
        let source = Source::new("m.kdl", "a \"\u{1b}[2J\u{9b}x\"\n");
        let diag =
            Diagnostic::error("dbward::x", "bad `\u{1b}[2J`").label(Span::new(2, 11), "\u{7}");
        let out = render(&source, &[diag], 80, false);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{9b}') && !out.contains('\u{7}'),
            "{out:?}"
        );
    }

    #[test]
    fn long_lines_are_windowed() {
        let text = format!("{}bad{}", "x".repeat(100_000), "y".repeat(100_000));
        let source = Source::new("junk.kdl", text);
        let diag = Diagnostic::error("dbward::kdl_syntax", "bad")
            .label(Span::new(100_000, 100_003), "here");
        let out = render(&source, &[diag], 80, false);
        assert!(out.len() < 2_000, "{} bytes", out.len());
        assert!(out.contains("junk.kdl:1:100001"), "{out}");
    }

    #[test]
    fn json_has_lines_and_columns() {
        let source = Source::new("m.kdl", "a\nbé c\n");
        let diag = Diagnostic::warning("dbward::x", "m").label(Span::new(6, 7), "");
        let value = to_json(&source, &[diag]);
        assert_eq!(value[0]["line"], 2);
        assert_eq!(value[0]["column"], 4);
        assert_eq!(value[0]["end_column"], 5);
        assert_eq!(value[0]["severity"], "warning");
    }
}
