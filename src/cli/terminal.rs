//! What the CLI prints from the server is made harmless for a terminal first: command
//! output, app logs, names and messages can carry escape sequences (clear the screen, rewrite
//! a line, retitle the window, forge a hyperlink or a "✓ health" line). Every control
//! character but newline and tab is dropped, and so is each whole ANSI escape sequence (CSI,
//! OSC, DCS and the rest), with the C1 controls (U+0080–U+009F) some terminals act on.

/// A byte-level filter that keeps its place across chunks, for streamed output.
#[derive(Debug, Default)]
pub struct Strip {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// In a CSI sequence (`ESC [` ...): until a final byte 0x40–0x7E.
    Csi,
    /// In a string (OSC, DCS, SOS, PM, APC): until BEL or `ESC \`.
    Str,
    /// ESC seen inside a string: `\` ends it.
    StrEscape,
    /// After ESC and an intermediate byte (0x20–0x2F): until a final byte.
    Intermediate,
    /// After 0xC2, the first byte of U+0080–U+00BF.
    C2,
}

impl Strip {
    /// The printable part of `bytes`; a sequence split between chunks is still dropped whole.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            self.state = match (self.state, b) {
                (State::Text, 0x1b) => State::Escape,
                (State::Text, b'\n' | b'\t') => {
                    out.push(b);
                    State::Text
                }
                (State::Text, 0x00..=0x1f | 0x7f) => State::Text,
                (State::Text, 0xc2) => State::C2,
                (State::Text, b) => {
                    out.push(b);
                    State::Text
                }
                // U+0080–U+009F are C1 controls (U+009B is a CSI on its own)
                (State::C2, 0x80..=0x9f) => State::Text,
                (State::C2, b) => {
                    out.push(0xc2);
                    self.state = State::Text;
                    out.extend(self.feed(&[b]));
                    self.state
                }
                (State::Escape, b'[') => State::Csi,
                (State::Escape, b']' | b'P' | b'X' | b'^' | b'_') => State::Str,
                (State::Escape, 0x20..=0x2f) => State::Intermediate,
                (State::Escape, 0x1b) => State::Escape,
                // a two-byte sequence (ESC c, ESC 7...), or ESC before a control: both dropped
                (State::Escape, _) => State::Text,
                (State::Csi, 0x40..=0x7e) => State::Text,
                (State::Csi, 0x1b) => State::Escape,
                (State::Csi, _) => State::Csi,
                (State::Intermediate, 0x20..=0x2f) => State::Intermediate,
                (State::Intermediate, 0x1b) => State::Escape,
                (State::Intermediate, _) => State::Text,
                (State::Str, 0x07) => State::Text,
                (State::Str, 0x1b) => State::StrEscape,
                (State::Str, _) => State::Str,
                (State::StrEscape, b'\\') => State::Text,
                (State::StrEscape, 0x1b) => State::StrEscape,
                (State::StrEscape, _) => State::Str,
            };
        }
        out
    }
}

/// `s` without control characters or escape sequences (newline and tab kept).
pub fn clean(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s.to_string();
    }
    let mut strip = Strip::default();
    let mut bytes = strip.feed(s.as_bytes());
    if strip.state == State::C2 {
        bytes.push(0xc2);
    }
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Every string in `value` (keys too) cleaned in place.
pub fn clean_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => *s = clean(s),
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            let dirty = map
                .keys()
                .any(|k| k.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
            if dirty {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (clean(&k), v))
                    .collect();
            }
            map.values_mut().for_each(clean_json);
        }
        _ => {}
    }
}

/// Writes `args` to stdout. A reader that went away (`ferry history --json | head -n 1`)
/// ends ferry at once, quietly and with success, as a closed pipe ends `cat`; any other
/// write error (a full disk behind `>`) is said on stderr, with exit status 1.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_controls_are_dropped_newlines_and_tabs_kept() {
        let cases = [
            ("plain ✓ text\tand\nlines", "plain ✓ text\tand\nlines"),
            ("\x1b[31mred\x1b[0m", "red"),
            ("\x1b[2J\x1b[Hcleared", "cleared"),
            ("\x1b]0;pwned\x07title", "title"),
            ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
            ("a\rb\x08c\x00d\x7fe", "abcde"),
            ("\u{9b}31mC1 csi", "31mC1 csi"),
            ("\x1bPdcs string\x1b\\after", "after"),
            ("\x1b(Bcharset", "charset"),
            ("\x1b7saved\x1b8", "saved"),
            ("é ü ¡ ¿", "é ü ¡ ¿"),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn a_sequence_split_across_chunks_is_still_dropped() {
        let mut s = Strip::default();
        let mut out = s.feed(b"ok \x1b[3");
        out.extend(s.feed(b"1mred \xc2"));
        out.extend(s.feed(b"\x9b2Jend \xc2"));
        out.extend(s.feed(b"\xa1"));
        assert_eq!(String::from_utf8(out).unwrap(), "ok red 2Jend ¡");
    }

    #[test]
    fn json_strings_and_keys_are_cleaned() {
        let mut v = serde_json::json!({"out\x1b[1m": ["\x1b[2Jx", 1, {"m": "\ry"}]});
        clean_json(&mut v);
        assert_eq!(v, serde_json::json!({"out": ["x", 1, {"m": "y"}]}));
    }
}
