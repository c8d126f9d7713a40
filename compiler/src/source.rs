//! A manifest's text and the name it is reported under.

/// One manifest file: its display name (usually the path) and its full text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// A character that changes how text around it is displayed without being seen itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// A bidirectional control (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C): it
    /// reorders what a terminal or an editor shows ("Trojan Source", CVE-2021-42574).
    Bidi,
    /// A character that renders as nothing: Unicode's Default_Ignorable_Code_Point (zero-width
    /// space and joiners, soft hyphen, byte order mark, variation selectors, tags…) or another
    /// format character (general category Cf).
    Invisible,
}

/// Whether `c` is shown as something other than itself, and how.
pub fn hidden(c: char) -> Option<Hidden> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    use unicode_security::GeneralSecurityProfile as _;
    use unicode_security::general_security_profile::IdentifierType;
    if matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
    {
        return Some(Hidden::Bidi);
    }
    if c.is_ascii() {
        return None;
    }
    let ignorable = c.identifier_type() == Some(IdentifierType::Default_Ignorable);
    (ignorable || c.general_category() == GeneralCategory::Format).then_some(Hidden::Invisible)
}

/// `text` with every non-ASCII character written as `<U+XXXX>`, so that a message shows which
/// characters a name really holds (a Cyrillic `а` and a Latin `a` look the same).
pub fn spelled_out(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            out.push_str(&format!("<U+{:04X}>", c as u32));
        }
    }
    out
}

/// The common name of a character that [`hidden`] reports, when it has a well-known one.
pub fn hidden_name(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{034F}' => "COMBINING GRAPHEME JOINER",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE (byte order mark)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters() {
        for c in [
            '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            assert_eq!(hidden(c), Some(Hidden::Bidi), "{c:?}");
        }
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{00AD}',
            '\u{FEFF}',
            '\u{2060}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{0600}',
            '\u{180E}',
            '\u{3164}',
        ] {
            assert_eq!(hidden(c), Some(Hidden::Invisible), "{c:?}");
        }
        for c in ['a', '-', ' ', 'é', 'а', '中', '\u{00A0}'] {
            assert_eq!(hidden(c), None, "{c:?}");
        }
        assert_eq!(spelled_out("cаrol"), "c<U+0430>rol");
    }
}
