//! The shared action grammar: `name[argument]`, surrounding whitespace ignored.

/// An action split into its tool name and argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAction<'a> {
    /// The tool name before `[` (lower-case ASCII letters and `_`).
    pub name: &'a str,
    /// The text between the brackets, trimmed.
    pub arg: &'a str,
}

/// Parses `name[argument]`. Returns a short human-readable reason on failure, which environments
/// put into their observation.
///
/// The argument runs to the last `]`; nothing but whitespace may follow it.
pub fn parse_action(text: &str) -> Result<ParsedAction<'_>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty action".to_string());
    }
    let Some(open) = text.find('[') else {
        return Err(format!("expected name[argument], got '{}'", clip(text)));
    };
    let Some(close) = text.rfind(']') else {
        return Err(format!("missing ']' in '{}'", clip(text)));
    };
    if close < open {
        return Err(format!("expected name[argument], got '{}'", clip(text)));
    }
    let name = text[..open].trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(format!("bad tool name '{}'", clip(name)));
    }
    if !text[close + 1..].trim().is_empty() {
        return Err(format!("unexpected text after ']' in '{}'", clip(text)));
    }
    Ok(ParsedAction {
        name,
        arg: text[open + 1..close].trim(),
    })
}

/// Clips user text for inclusion in an observation (at most 40 chars, on a char boundary).
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(MAX).collect();
        s.push_str("...");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_well_formed_actions() {
        let a = parse_action("  search[Kelda Morr] ").unwrap();
        assert_eq!(
            a,
            ParsedAction {
                name: "search",
                arg: "Kelda Morr"
            }
        );
        let a = parse_action("answer[ 12 ]").unwrap();
        assert_eq!(a.arg, "12");
        let a = parse_action("answer[(1+2)*[3]]").unwrap();
        assert_eq!(a.arg, "(1+2)*[3]");
    }

    #[test]
    fn rejects_malformed_actions_with_a_reason() {
        for bad in [
            "",
            "search",
            "search[x",
            "]x[",
            "Search[x]",
            "[x]",
            "a[x] extra",
            "s p[x]",
        ] {
            let err = parse_action(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(100);
        let c = clip(&s);
        assert!(c.ends_with("..."));
        assert_eq!(c.chars().count(), 43);
    }
}
