//! Key names and text → QMP `send-key` key lists. A combination is key names joined by
//! `-` or `+` (`ctrl-alt-delete`, `shift+a`); names are QEMU's QKeyCode names plus a few
//! common aliases. Text is typed on a US layout, with shift for capitals and symbols.

use crate::qmp::extra::KeyValue;

/// QEMU's QKeyCode names.
const QCODES: &str = "unmapped shift shift_r alt alt_r ctrl ctrl_r menu esc 1 2 3 4 5 6 7 8 9 0 minus equal \
backspace tab q w e r t y u i o p bracket_left bracket_right ret a s d f g h j k l semicolon apostrophe \
grave_accent backslash z x c v b n m comma dot slash asterisk spc caps_lock f1 f2 f3 f4 f5 f6 f7 f8 f9 f10 \
num_lock scroll_lock kp_divide kp_multiply kp_subtract kp_add kp_enter kp_decimal sysrq kp_0 kp_1 kp_2 kp_3 \
kp_4 kp_5 kp_6 kp_7 kp_8 kp_9 less f11 f12 print home pgup pgdn end left up down right insert delete stop \
again props undo front copy open paste find cut lf help meta_l meta_r compose pause ro hiragana henkan yen \
muhenkan katakanahiragana kp_comma kp_equals power sleep wake audionext audioprev audiostop audioplay \
audiomute volumeup volumedown mediaselect mail calculator computer ac_home ac_back ac_forward ac_refresh \
ac_bookmarks lang1 lang2";

/// Common names people use for keys, mapped to QKeyCode names.
const ALIASES: &[(&str, &str)] = &[
    ("control", "ctrl"),
    ("del", "delete"),
    ("enter", "ret"),
    ("return", "ret"),
    ("space", "spc"),
    ("escape", "esc"),
    ("bksp", "backspace"),
    ("win", "meta_l"),
    ("super", "meta_l"),
    ("meta", "meta_l"),
    ("pageup", "pgup"),
    ("pagedown", "pgdn"),
    ("ins", "insert"),
    ("altgr", "alt_r"),
    ("prtsc", "print"),
];

/// Why keys could not be sent.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "unknown key {key:?} in {combo:?}; use QEMU key names such as ctrl, alt, shift, delete, ret, esc, f1, a, 1"
    )]
    UnknownKey { combo: String, key: String },
    #[error("empty key combination; give something like \"ctrl-alt-delete\"")]
    Empty,
    #[error(
        "character {ch:?} at position {index} cannot be typed on a US keyboard; type_text takes printable ASCII, newline and tab"
    )]
    Untypable { ch: char, index: usize },
}

fn qcode(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if let Some((_, q)) = ALIASES.iter().find(|(a, _)| *a == lower) {
        return Some(q);
    }
    QCODES.split(' ').find(|q| *q == lower)
}

/// Parses a combination such as `ctrl-alt-delete` into the keys pressed together.
///
/// # Errors
/// [`KeyError::UnknownKey`] naming the bad part, or [`KeyError::Empty`].
pub fn parse_combo(combo: &str) -> Result<Vec<KeyValue>, KeyError> {
    let combo_t = combo.trim();
    if combo_t.is_empty() {
        return Err(KeyError::Empty);
    }
    // A lone "-" or "+" is the key itself; otherwise they separate keys.
    let parts: Vec<&str> = if combo_t.len() == 1 { vec![combo_t] } else { combo_t.split(['-', '+']).collect() };
    parts
        .iter()
        .map(|p| {
            let name = match *p {
                "-" => "minus",
                "+" => "equal",
                other => other,
            };
            qcode(name)
                .map(KeyValue::qcode)
                .ok_or_else(|| KeyError::UnknownKey { combo: combo.to_owned(), key: (*p).to_owned() })
        })
        .collect()
}

/// The key (and whether shift is needed) that types `c` on a US keyboard.
fn us_key(c: char) -> Option<(bool, &'static str)> {
    const PLAIN: &[(char, &str)] = &[
        (' ', "spc"),
        ('\n', "ret"),
        ('\t', "tab"),
        ('-', "minus"),
        ('=', "equal"),
        ('[', "bracket_left"),
        (']', "bracket_right"),
        ('\\', "backslash"),
        (';', "semicolon"),
        ('\'', "apostrophe"),
        (',', "comma"),
        ('.', "dot"),
        ('/', "slash"),
        ('`', "grave_accent"),
    ];
    const SHIFTED: &[(char, &str)] = &[
        ('!', "1"),
        ('@', "2"),
        ('#', "3"),
        ('$', "4"),
        ('%', "5"),
        ('^', "6"),
        ('&', "7"),
        ('*', "8"),
        ('(', "9"),
        (')', "0"),
        ('_', "minus"),
        ('+', "equal"),
        ('{', "bracket_left"),
        ('}', "bracket_right"),
        ('|', "backslash"),
        (':', "semicolon"),
        ('"', "apostrophe"),
        ('<', "comma"),
        ('>', "dot"),
        ('?', "slash"),
        ('~', "grave_accent"),
    ];
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        let s = c.to_string();
        return QCODES.split(' ').find(|q| *q == s).map(|q| (false, q));
    }
    if c.is_ascii_uppercase() {
        let s = c.to_ascii_lowercase().to_string();
        return QCODES.split(' ').find(|q| *q == s).map(|q| (true, q));
    }
    PLAIN
        .iter()
        .find(|(k, _)| *k == c)
        .map(|(_, q)| (false, *q))
        .or_else(|| SHIFTED.iter().find(|(k, _)| *k == c).map(|(_, q)| (true, *q)))
}

/// One `send-key` key list per character of `text`.
///
/// # Errors
/// [`KeyError::Untypable`] for a character with no key on a US layout.
pub fn text_to_keys(text: &str) -> Result<Vec<Vec<KeyValue>>, KeyError> {
    text.chars()
        .enumerate()
        .map(|(index, ch)| {
            let (shift, key) = us_key(ch).ok_or(KeyError::Untypable { ch, index })?;
            let mut keys = Vec::with_capacity(2);
            if shift {
                keys.push(KeyValue::qcode("shift"));
            }
            keys.push(KeyValue::qcode(key));
            Ok(keys)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(keys: &[KeyValue]) -> Vec<&str> {
        keys.iter().map(|k| k.data.as_str()).collect()
    }

    #[test]
    fn ctrl_alt_delete_parses_to_three_qcodes() {
        assert_eq!(names(&parse_combo("ctrl-alt-delete").unwrap()), ["ctrl", "alt", "delete"]);
    }

    #[test]
    fn aliases_and_case_are_accepted() {
        assert_eq!(names(&parse_combo("Control+Enter").unwrap()), ["ctrl", "ret"]);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse_combo("ctrl-banana").unwrap_err();
        assert_eq!(e, KeyError::UnknownKey { combo: "ctrl-banana".into(), key: "banana".into() });
    }

    #[test]
    fn text_uses_shift_for_capitals_and_symbols() {
        let keys = text_to_keys("a$B\n").unwrap();
        let n: Vec<Vec<&str>> = keys.iter().map(|k| names(k)).collect();
        assert_eq!(n, [vec!["a"], vec!["shift", "4"], vec!["shift", "b"], vec!["ret"]]);
    }

    #[test]
    fn non_ascii_text_is_refused_with_its_position() {
        assert_eq!(text_to_keys("ok é").unwrap_err(), KeyError::Untypable { ch: 'é', index: 3 });
    }
}
