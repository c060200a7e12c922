//! Base45 (RFC 9285), strict.
//!
//! Base45 is the encoding the EU Digital COVID Certificate uses for QR codes:
//! its alphabet is exactly the QR alphanumeric set, so a base45 text is coded
//! in the QR's alphanumeric mode at 5.5 bits a character. We keep our own
//! forty lines rather than a crate because the decoder must be *strict*
//! (every byte string has exactly one accepted text, so a token cannot be
//! re-encoded into a second valid form) and must decode into a caller's
//! stack buffer without allocating: it sits on the scan hot path.

use thiserror::Error;

const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Maps an ASCII byte to its base45 digit, or 0xff when it is not one.
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 45 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Base45Error {
    #[error("character {0:#04x} at {1} is not in the base45 alphabet")]
    BadChar(u8, usize),
    #[error("a base45 text cannot have length {0} (length mod 3 is 1)")]
    BadLength(usize),
    #[error("base45 group at {0} is out of range (non-canonical)")]
    NonCanonical(usize),
    #[error("decoded text does not fit the {0}-byte buffer")]
    TooLong(usize),
}

/// Appends the base45 text of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() / 2 * 3 + 2);
    for pair in bytes.chunks(2) {
        let (n, digits) = match *pair {
            [a, b] => (u32::from(a) * 256 + u32::from(b), 3),
            [a] => (u32::from(a), 2),
            _ => unreachable!("chunks(2) yields one or two bytes"),
        };
        let mut n = n;
        for _ in 0..digits {
            out.push(ALPHABET[(n % 45) as usize] as char);
            n /= 45;
        }
    }
}

/// The number of bytes `text_len` base45 characters decode to, when valid.
pub const fn decoded_len(text_len: usize) -> Option<usize> {
    match text_len % 3 {
        0 => Some(text_len / 3 * 2),
        2 => Some(text_len / 3 * 2 + 1),
        _ => None,
    }
}

/// Decodes `text` into the front of `out` and returns the decoded length.
///
/// Rejects characters outside the alphabet, a dangling single character, and
/// groups whose value does not fit their bytes (the only way two texts could
/// decode to the same bytes).
pub fn decode_into(text: &[u8], out: &mut [u8]) -> Result<usize, Base45Error> {
    let len = decoded_len(text.len()).ok_or(Base45Error::BadLength(text.len()))?;
    if len > out.len() {
        return Err(Base45Error::TooLong(out.len()));
    }
    let digit = |i: usize| -> Result<u32, Base45Error> {
        let d = DECODE[text[i] as usize];
        if d == 0xff {
            Err(Base45Error::BadChar(text[i], i))
        } else {
            Ok(u32::from(d))
        }
    };
    let mut o = 0;
    let mut i = 0;
    while i + 3 <= text.len() {
        let n = digit(i)? + digit(i + 1)? * 45 + digit(i + 2)? * 45 * 45;
        if n > 0xffff {
            return Err(Base45Error::NonCanonical(i));
        }
        out[o] = (n >> 8) as u8;
        out[o + 1] = n as u8;
        o += 2;
        i += 3;
    }
    if i < text.len() {
        let n = digit(i)? + digit(i + 1)? * 45;
        if n > 0xff {
            return Err(Base45Error::NonCanonical(i));
        }
        out[o] = n as u8;
        o += 1;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(bytes: &[u8]) -> String {
        let mut s = String::new();
        encode_into(bytes, &mut s);
        s
    }

    #[test]
    fn rfc9285_examples() {
        assert_eq!(encode(b"AB"), "BB8");
        assert_eq!(encode(b"Hello!!"), "%69 VD92EX0");
        assert_eq!(encode(b"base-45"), "UJCLQE7W581");
        let mut buf = [0u8; 16];
        let n = decode_into(b"QED8WEX0", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ietf!");
    }

    #[test]
    fn rejects_non_canonical_groups() {
        // "GGW" is 65536 + 0: one past the largest two-byte group.
        let mut buf = [0u8; 4];
        assert_eq!(decode_into(b"GGW", &mut buf), Err(Base45Error::NonCanonical(0)));
        // "U5" is 30 + 5 * 45 = 255, the largest one-byte group; "V5" is 256.
        assert_eq!(decode_into(b"U5", &mut buf), Ok(1));
        assert_eq!(decode_into(b"V5", &mut buf), Err(Base45Error::NonCanonical(0)));
    }

    #[test]
    fn rejects_bad_chars_lengths_and_overflow() {
        let mut buf = [0u8; 2];
        assert_eq!(decode_into(b"bb8", &mut buf), Err(Base45Error::BadChar(b'b', 0)));
        assert_eq!(decode_into(b"BB8B", &mut buf), Err(Base45Error::BadLength(4)));
        assert_eq!(decode_into(b"BB8BB", &mut buf), Err(Base45Error::TooLong(2)));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = encode(&bytes);
            let mut buf = vec![0u8; bytes.len()];
            let n = decode_into(text.as_bytes(), &mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &bytes[..]);
        }

        #[test]
        fn decoding_accepts_only_canonical_texts(text in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut buf = [0u8; 64];
            if let Ok(n) = decode_into(&text, &mut buf) {
                // Whatever decodes re-encodes to exactly the same text.
                let again = encode(&buf[..n]);
                prop_assert_eq!(again.as_bytes(), &text[..]);
            }
        }
    }
}
