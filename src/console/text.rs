//! Console bytes as text a model (or a log) can read: every terminal control sequence
//! removed, not just colours. The raw `serial.log` is never changed; this is applied to
//! what tools return.
//!
//! What goes (ECMA-48 and the VT100/xterm additions guests emit):
//! - CSI sequences, `ESC [` or C1 `U+009B`, whatever their parameters (colours, cursor
//!   moves, the shell's `ESC[6n`, private modes such as `ESC[?25l`);
//! - string controls up to their terminator: OSC (`ESC ]`, window titles, hyperlinks),
//!   DCS (`ESC P`), SOS, PM and APC, ended by ST (`ESC \`), BEL, or a newline (so a
//!   broken sequence never swallows the rest of the log);
//! - `nF` escapes with intermediates, such as the charset designations `ESC ( 0` and
//!   `ESC ( B`, and the two-character escapes (`ESC 7`, `ESC =`, `ESC c`, …);
//! - every other control character except newline and tab (carriage returns included).
//!
//! Text drawn in the DEC Special Graphics charset (selected with `ESC ( 0`, or with
//! `ESC ) 0` and SO) is translated to the Unicode characters it shows: the box
//! `\x1b(0lqqk\x1b(B` becomes `┌──┐`, not `lqqk`. Invalid UTF-8 becomes U+FFFD.

/// Where the cleaner is inside a control sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    /// After ESC.
    Escape,
    /// After `ESC` and intermediates (0x20–0x2F); `designate` is the charset slot an
    /// `ESC (`/`ESC )` sequence sets (0 = G0, 1 = G1).
    Intermediate {
        designate: Option<u8>,
    },
    /// Inside a CSI sequence, until its final byte (0x40–0x7E).
    Csi,
    /// Inside OSC/DCS/SOS/PM/APC, until ST, BEL or a newline.
    Str,
    /// An ESC inside a string: `\` ends it (ST).
    StrEscape,
}

/// A streaming cleaner; [`clean`] runs one over a whole buffer.
#[derive(Debug, Clone)]
struct Cleaner {
    state: State,
    /// G0 and G1 hold DEC Special Graphics.
    graphics: [bool; 2],
    /// SO selected G1.
    shifted: bool,
    out: String,
}

/// The character a DEC Special Graphics code point shows (0x5F–0x7E), as xterm draws it.
fn dec_graphic(c: char) -> Option<char> {
    const TABLE: [char; 32] = [
        ' ', '◆', '▒', '␉', '␌', '␍', '␊', '°', '±', '␤', '␋', '┘', '┐', '┌', '└', '┼', '⎺', '⎻', '─', '⎼', '⎽', '├',
        '┤', '┴', '┬', '│', '≤', '≥', 'π', '≠', '£', '·',
    ];
    let i = u32::from(c).checked_sub(0x5F)?;
    TABLE.get(usize::try_from(i).ok()?).copied()
}

impl Cleaner {
    fn new(capacity: usize) -> Self {
        Self { state: State::Text, graphics: [false; 2], shifted: false, out: String::with_capacity(capacity) }
    }

    fn text(&mut self, c: char) {
        match c {
            '\u{1b}' => self.state = State::Escape,
            '\u{9b}' => self.state = State::Csi,
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => self.state = State::Str,
            '\u{0e}' => self.shifted = true,
            '\u{0f}' => self.shifted = false,
            '\n' | '\t' => self.out.push(c),
            c if c.is_control() => {}
            c => {
                let graphics = self.graphics[usize::from(self.shifted)];
                self.out.push(if graphics { dec_graphic(c).unwrap_or(c) } else { c });
            }
        }
    }

    fn feed(&mut self, c: char) {
        let code = u32::from(c);
        self.state = match self.state {
            State::Text => {
                self.text(c);
                return;
            }
            State::Escape => match c {
                '[' => State::Csi,
                ']' | 'P' | 'X' | '^' | '_' => State::Str,
                '(' => State::Intermediate { designate: Some(0) },
                ')' => State::Intermediate { designate: Some(1) },
                _ if (0x20..=0x2F).contains(&code) => State::Intermediate { designate: None },
                _ if (0x30..=0x7E).contains(&code) => State::Text,
                // A lone ESC before anything else: drop it, keep what follows.
                _ => {
                    self.state = State::Text;
                    self.text(c);
                    return;
                }
            },
            State::Intermediate { designate } => match code {
                0x20..=0x2F => State::Intermediate { designate: None },
                0x30..=0x7E => {
                    if let Some(slot) = designate {
                        self.graphics[usize::from(slot)] = c == '0';
                    }
                    State::Text
                }
                _ => {
                    self.state = State::Text;
                    self.text(c);
                    return;
                }
            },
            State::Csi => match code {
                0x40..=0x7E => State::Text,
                0x20..=0x3F => State::Csi,
                // Not part of a CSI: the sequence was cut short.
                _ => {
                    self.state = State::Text;
                    self.text(c);
                    return;
                }
            },
            State::Str => match c {
                '\u{07}' | '\u{9c}' => State::Text,
                '\u{1b}' => State::StrEscape,
                '\n' => {
                    self.out.push('\n');
                    State::Text
                }
                _ => State::Str,
            },
            State::StrEscape => match c {
                '\\' => State::Text,
                // Another sequence starts: the string ended without its ST.
                _ => {
                    self.state = State::Escape;
                    self.feed(c);
                    return;
                }
            },
        };
    }
}

/// Console bytes as readable text: every control sequence and control character other
/// than newline and tab removed, DEC line drawing shown as Unicode, invalid UTF-8
/// replaced. See the module documentation for the details.
#[must_use]
pub fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut c = Cleaner::new(text.len());
    for ch in text.chars() {
        c.feed(ch);
    }
    c.out
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn colours_cursor_reports_and_carriage_returns_go() {
        assert_eq!(clean(b"\x1b[6nfixture# ls\r\n\x1b[0;32mok\x1b[0m\n"), "fixture# ls\nok\n");
    }

    #[test]
    fn charset_switches_go_and_line_drawing_becomes_box_characters() {
        assert_eq!(clean(b"\x1b(0lqqqqk\x1b(B Debian \x1b(0x\x1b(B"), "┌────┐ Debian │");
    }

    #[test]
    fn a_half_stripped_charset_switch_of_the_installer_is_gone() {
        // What the Debian installer's newt screens send around a dialog's top border.
        let raw = b"\x1b[1;1H\x1b[0;37;44m\x1b(0lqqqqqqqqqqqqqqqqk\x1b(B\x1b[0;30;47m [!!] Select a language \x1b[7;1H";
        assert_eq!(clean(raw), "┌────────────────┐ [!!] Select a language ");
    }

    #[test]
    fn shift_out_uses_the_g1_graphics_set() {
        assert_eq!(clean(b"\x1b)0\x0eqqq\x0fqqq"), "───qqq");
    }

    #[test]
    fn osc_titles_and_hyperlinks_go_with_either_terminator() {
        let raw = b"\x1b]0;root@deb: ~\x07prompt \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ end";
        assert_eq!(clean(raw), "prompt link end");
    }

    #[test]
    fn private_modes_keypad_and_reset_escapes_go() {
        assert_eq!(clean(b"\x1b[?25l\x1b[?2004h\x1b=\x1b>\x1b7a\x1b8\x1bc\x1b#8b\x1b%Gc"), "abc");
    }

    #[test]
    fn dcs_strings_go() {
        assert_eq!(clean(b"a\x1bP1$r0m\x1b\\b"), "ab");
    }

    #[test]
    fn an_unterminated_string_stops_at_the_newline() {
        assert_eq!(clean(b"a\x1b]0;title\nnext line\n"), "a\nnext line\n");
    }

    #[test]
    fn c1_controls_in_utf8_go() {
        assert_eq!(clean("a\u{9b}31mred\u{9b}0m\u{9d}t\u{9c}b".as_bytes()), "aredb");
    }

    #[test]
    fn a_cut_csi_keeps_the_text_after_it() {
        assert_eq!(clean(b"\x1b[12\nnext\n\x1b"), "\nnext\n");
    }

    #[test]
    fn utf8_text_and_tabs_stay() {
        assert_eq!(clean("größe\t→ ok\x07\x08".as_bytes()), "größe\t→ ok");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(clean(b"a\xffb"), "a\u{fffd}b");
    }
}
