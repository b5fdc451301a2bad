//! Random identifiers and the shapes the API accepts for them.

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `prefix` followed by `len` random lowercase letters and digits.
pub fn random_id(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// Generates an agent id: the agent type's prefix, a dash and six lowercase
/// alphanumerics, such as `oc-a1b2c3`.
pub fn agent_id(type_prefix: &str) -> String {
    random_id(&format!("{type_prefix}-"), 6)
}

/// True when `id` has the shape of an agent id, so that a malformed path
/// parameter gets 404 without a database query.
pub fn is_agent_id(id: &str) -> bool {
    let Some((prefix, suffix)) = id.split_once('-') else {
        return false;
    };
    (1..=8).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase())
        && suffix.len() == 6
        && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// True when `id` has the shape of an id made by [`random_id`] with `prefix`.
pub fn is_prefixed_id(id: &str, prefix: &str, len: usize) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == len && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// Characters that may neither start nor end a label: controls and the
/// Unicode White_Space characters that `str::trim` removes.
macro_rules! label_edge_excluded {
    () => {
        r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}

/// Checks a human-readable label (an agent, schedule or token name): 1 to
/// `max` characters, no control characters, no leading or trailing
/// whitespace. [`LABEL_PATTERN`] expresses the same rule in the OpenAPI
/// document.
pub fn check_label(label: &str, max: usize) -> Result<(), String> {
    let length = label.chars().count();
    if length == 0 || length > max {
        return Err(format!("{label:?} has {length} characters; use 1 to {max}"));
    }
    if label.chars().any(char::is_control) || label.trim() != label {
        return Err(format!("{label:?} contains control characters or leading or trailing spaces; remove them"));
    }
    Ok(())
}

/// Maximum length of an agent's name, in characters.
pub const AGENT_NAME_MAX_CHARS: usize = 64;
/// Maximum length of a schedule's or token's name, in characters.
pub const LABEL_MAX_CHARS: usize = 100;

/// The JSON Schema pattern of [`check_label`], without the length.
pub const LABEL_PATTERN: &str =
    concat!("^[^", label_edge_excluded!(), "]([^", r"\x00-\x1f\x7f-\x9f", "]*[^", label_edge_excluded!(), "])?$");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_have_the_documented_shape() {
        for _ in 0..100 {
            let id = agent_id("oc");
            assert!(is_agent_id(&id), "{id}");
            assert_eq!(id.len(), 9);
        }
    }

    #[test]
    fn malformed_agent_ids_are_rejected() {
        for id in ["oc-a1b2c", "oc-A1B2C3", "oca1b2c3", "-a1b2c3", "oc-a1b2c3d", "o1-a1b2c3", "oc-a1b2c/"] {
            assert!(!is_agent_id(id), "{id}");
        }
    }

    #[test]
    fn label_pattern_agrees_with_check_label() {
        let pattern = regex::Regex::new(LABEL_PATTERN).unwrap();
        let samples = [
            "a", "my agent", "Daily backup", " padded", "padded ", "\u{a0}nbsp", "tab\there", "line\nbreak", "x\u{85}",
            "\u{3000}ideographic", "ends\u{2029}", "é", "emoji 🦀", "\u{200b}zero-width", "mid\u{2003}space", "\u{7f}",
        ];
        for sample in samples {
            assert_eq!(check_label(sample, 64).is_ok(), pattern.is_match(sample), "{sample:?}");
        }
    }

    #[test]
    fn prefixed_ids_are_checked() {
        assert!(is_prefixed_id(&random_id("tok_", 12), "tok_", 12));
        assert!(!is_prefixed_id("tok_abc", "tok_", 12));
        assert!(!is_prefixed_id("bkp_abcdefghijkl", "tok_", 12));
    }
}
