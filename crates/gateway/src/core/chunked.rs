//! The strict chunked-body scanner (RFC 9112 §7.1), one for both directions: the fast
//! path finds where a chunked upstream response ends with it, and the connection guard
//! checks every chunked request body with it before Pingora decodes the bytes.
//!
//! It finds where a body ends across reads without changing a byte. Refused: a size
//! that is not 1–15 hex digits, whitespace before the size, a line ending in a bare
//! LF or a CR without LF, chunk extensions that are not `; name[=token|"quoted"]`
//! (BWS allowed around `;` and `=`), control characters anywhere, data not followed
//! by CRLF, trailer lines that are not `name: value`, a size line over
//! [`MAX_LINE`] bytes or trailers over [`MAX_TRAILERS`] bytes.

use super::head::is_token_byte;

/// Longest chunk-size line (size and extensions).
pub const MAX_LINE: usize = 4096;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 32 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

/// Follows a chunked body; see the module docs.
#[derive(Debug, Default)]
pub struct ChunkedScanner {
    state: State,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line.
    #[default]
    SizeStart,
    Size {
        digits: u8,
        value: u64,
    },
    /// After the size or an extension: BWS, `;` or CR.
    ExtSep {
        value: u64,
    },
    ExtNameStart {
        value: u64,
    },
    ExtName {
        value: u64,
    },
    /// BWS after a name: `=`, `;` or CR.
    ExtAfterName {
        value: u64,
    },
    ExtValueStart {
        value: u64,
    },
    ExtValue {
        value: u64,
    },
    Quoted {
        value: u64,
    },
    QuotedEscape {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A visible character, a space or a tab, or obs-text: what a field value or a
/// quoted string may hold.
fn is_text(b: u8) -> bool {
    is_ws(b) || (0x21..=0x7e).contains(&b) || b >= 0x80
}

impl ChunkedScanner {
    /// Feeds the next bytes; `Some(n)`: the body ends after `data[..n]`.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        self.feed_with(data, |_| {})
    }

    /// [`Self::feed`], telling `on_data` where the chunks' data lies in `data` (for
    /// an engine that decodes the body rather than passing it on as it is).
    pub fn feed_with(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Option<usize>, BadChunk> {
        use State::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            if let Data(left) = self.state {
                let n = (left.min((data.len() - i) as u64)) as usize;
                on_data(i..i + n);
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 { DataCr } else { Data(left) };
                continue;
            }
            if matches!(
                self.state,
                SizeStart
                    | Size { .. }
                    | ExtSep { .. }
                    | ExtNameStart { .. }
                    | ExtName { .. }
                    | ExtAfterName { .. }
                    | ExtValueStart { .. }
                    | ExtValue { .. }
                    | Quoted { .. }
                    | QuotedEscape { .. }
            ) {
                self.line += 1;
                if self.line > MAX_LINE {
                    return Err(BadChunk);
                }
            }
            if matches!(self.state, TrailerName | TrailerValue | TrailerLf) {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(BadChunk);
                }
            }
            self.state = match (self.state, b) {
                (SizeStart, _) | (Size { .. }, _) if b.is_ascii_hexdigit() => {
                    let (digits, value) = match self.state {
                        Size { digits, value } => (digits, value),
                        _ => (0, 0),
                    };
                    if digits == 15 {
                        return Err(BadChunk);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Size {
                        digits: digits + 1,
                        value: value * 16 + d,
                    }
                }
                (Size { value, .. } | ExtSep { value }, b';') => ExtNameStart { value },
                (Size { value, .. } | ExtSep { value }, _) if is_ws(b) => ExtSep { value },
                (
                    Size { value, .. }
                    | ExtSep { value }
                    | ExtName { value }
                    | ExtAfterName { value }
                    | ExtValue { value },
                    b'\r',
                ) => SizeLf { value },
                (ExtNameStart { value }, _) if is_ws(b) => ExtNameStart { value },
                (ExtNameStart { value } | ExtName { value }, _) if is_token_byte(b) => {
                    ExtName { value }
                }
                (ExtName { value } | ExtAfterName { value }, _) if is_ws(b) => {
                    ExtAfterName { value }
                }
                (ExtName { value } | ExtAfterName { value } | ExtValue { value }, b';') => {
                    ExtNameStart { value }
                }
                (ExtName { value } | ExtAfterName { value }, b'=') => ExtValueStart { value },
                (ExtValueStart { value }, _) if is_ws(b) => ExtValueStart { value },
                (ExtValueStart { value }, b'"') => Quoted { value },
                (ExtValueStart { value } | ExtValue { value }, _) if is_token_byte(b) => {
                    ExtValue { value }
                }
                (ExtValue { value }, _) if is_ws(b) => ExtSep { value },
                (Quoted { value }, b'"') => ExtSep { value },
                (Quoted { value }, b'\\') => QuotedEscape { value },
                (Quoted { value } | QuotedEscape { value }, _) if is_text(b) => Quoted { value },
                (SizeLf { value }, b'\n') => {
                    self.line = 0;
                    if value == 0 {
                        TrailerStart
                    } else {
                        Data(value)
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerStart, b'\r') => FinalLf,
                (TrailerStart | TrailerName, _) if is_token_byte(b) => TrailerName,
                (TrailerName, b':') => TrailerValue,
                (TrailerValue, b'\r') => TrailerLf,
                (TrailerValue, _) if is_text(b) => TrailerValue,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => {
                    *self = Self::default();
                    return Ok(Some(i + 1));
                }
                _ => return Err(BadChunk),
            };
            i += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Result<Option<usize>, BadChunk> {
        let mut scanner = ChunkedScanner::default();
        let mut offset = 0;
        for part in parts {
            if let Some(n) = scanner.feed(part)? {
                return Ok(Some(offset + n));
            }
            offset += part.len();
        }
        Ok(None)
    }

    #[test]
    fn bodies_end_where_the_last_chunk_and_trailers_end() {
        let body = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(&[body]), Ok(Some(body.len() - 4)));
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(end_of(&[a, b]), Ok(Some(body.len() - 4)), "split {split}");
        }
        let trailers = b"A;ext=1\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n";
        assert_eq!(end_of(&[trailers]), Ok(Some(trailers.len())));
        assert_eq!(end_of(&[b"5\r\nhel"]), Ok(None));
    }

    #[test]
    fn data_is_found_across_reads() {
        let body = b"5;x=1\r\nhello\r\n3\r\n, w\r\n0\r\nT: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut scanner = ChunkedScanner::default();
            let mut decoded = Vec::new();
            let (a, b) = body.split_at(split);
            let first = scanner
                .feed_with(a, |r| decoded.extend_from_slice(&a[r]))
                .unwrap();
            assert_eq!(first, None, "split {split}");
            let end = scanner
                .feed_with(b, |r| decoded.extend_from_slice(&b[r]))
                .unwrap();
            assert_eq!(end, Some(b.len()), "split {split}");
            assert_eq!(decoded, b"hello, w", "split {split}");
        }
    }

    #[test]
    fn extensions_follow_the_grammar() {
        for ok in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ; a = b ; c=\"q \\\" x\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=b;c\r\nhello\r\n0;last\r\n\r\n",
            b"0000\r\n\r\n",
        ] {
            assert!(
                matches!(end_of(&[ok]), Ok(Some(_))),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn lenient_forms_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b" 5\r\nhello\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5\r\nhello\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"5;a\rb\r\nhello\r\n",
            b"5;\x00\r\n",
            b"5;a=\x01\r\n",
            b"5;=b\r\n",
            b"5;a=\"x\x7f\"\r\n",
            b"ffffffffffffffff\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                end_of(&[bad]),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"5;".as_slice(), &[b'a'; MAX_LINE]].concat();
        assert_eq!(end_of(&[&long]), Err(BadChunk));
    }
}
