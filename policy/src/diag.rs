//! Errors that show where: file, line, column, the line itself and a marker.

use std::fmt;
use std::ops::Range;

/// A policy error at a place in the text, rendered like a compiler's:
///
/// ```text
/// /etc/spacer/policy.toml:7:18: unknown namespace type "nett" (known: ...)
///   |
/// 7 | allow = ["net", "nett"]
///   |                 ^^^^^^
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or `embedded default`).
    pub source: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    snippet: String,
}

impl Diagnostic {
    pub(crate) fn new(source: &str, text: &str, span: Range<usize>, message: String) -> Diagnostic {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let line = line_of(text, start);
        let column = text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let width = text[start..end].chars().count().max(1);
        let gutter = line.to_string().len();
        let snippet = format!(
            "{pad} |\n{line} | {line_text}\n{pad} | {space}{marks}",
            pad = " ".repeat(gutter),
            space = " ".repeat(column - 1),
            marks = "^".repeat(width),
        );
        Diagnostic {
            source: source.to_owned(),
            line,
            column,
            message,
            snippet,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}\n{}",
            self.source, self.line, self.column, self.message, self.snippet
        )
    }
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
