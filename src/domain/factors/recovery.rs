//! Recovery codes: ten one-time codes, made at enrollment, for the day the phone is lost.
//!
//! Each code is 12 characters from a 32-letter alphabet without look-alikes (60 bits), shown as
//! `xxxx-xxxx-xxxx`. Input is forgiving: case, spaces and dashes are ignored, and the letters a
//! person might confuse (`0/o`, `1/l/i`) are read as the ones we use. Codes are stored as
//! HMAC-SHA256 under a pepper kept in the data directory, so neither a copied database alone nor a
//! fast hash search gets them back.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use serde::{Deserialize, Serialize};

use crate::base::clock::UnixTime;
use crate::base::secret::{Secret, random_bytes};

pub const COUNT: usize = 10;
const LENGTH: usize = 12;
/// Crockford's base32 alphabet, lower case: no i, l, o or u.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
// 12 symbols of 5 bits: 60 bits per code, comfortably over the 50 we promise.
const _: () = assert!(LENGTH * 5 >= 50);

/// A freshly generated code, in its display form. Shown once, never stored.
pub fn generate() -> String {
    let bytes = random_bytes::<LENGTH>();
    let raw: String = bytes.iter().map(|b| ALPHABET[(*b & 31) as usize] as char).collect();
    format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12])
}

/// The canonical form a code is hashed in, or `None` if it cannot be a code at all.
pub fn normalize(input: &str) -> Option<String> {
    let mut out = String::with_capacity(LENGTH);
    for c in input.chars() {
        let c = match c.to_ascii_lowercase() {
            ' ' | '-' => continue,
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        };
        if !ALPHABET.contains(&(c as u8)) || !c.is_ascii() {
            return None;
        }
        out.push(c);
    }
    (out.len() == LENGTH).then_some(out)
}

pub fn digest(pepper: &Secret, normalized: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper.expose()).expect("HMAC takes any key length");
    mac.update(normalized.as_bytes());
    crate::base::text::hex(&mac.finalize().into_bytes())
}

/// A new set: the codes to show, and the records to store.
pub fn new_set(pepper: &Secret) -> (Vec<String>, Vec<RecoveryCodeRecord>) {
    let codes: Vec<String> = (0..COUNT).map(|_| generate()).collect();
    let records = codes
        .iter()
        .map(|c| RecoveryCodeRecord {
            digest: digest(pepper, &normalize(c).expect("generated codes are valid")),
            used_at: None,
        })
        .collect();
    (codes, records)
}

/// The index of the unused record matching `input`, compared in constant time.
pub fn find_unused(pepper: &Secret, records: &[RecoveryCodeRecord], input: &str) -> Option<usize> {
    let wanted = digest(pepper, &normalize(input)?);
    let mut found = None;
    for (i, record) in records.iter().enumerate() {
        let same: bool = record.digest.as_bytes().ct_eq(wanted.as_bytes()).into();
        if same && record.used_at.is_none() {
            found = Some(i);
        }
    }
    found
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCodeRecord {
    /// HMAC-SHA256 of the normalised code under the data directory's pepper, hex.
    pub digest: String,
    pub used_at: Option<UnixTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_readable_and_carry_60_bits() {
        let pepper = Secret::new(b"pepper-pepper-pepper-pepper-pepper".to_vec());
        let (codes, records) = new_set(&pepper);
        assert_eq!(codes.len(), COUNT);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), COUNT);
        for code in &codes {
            assert_eq!(code.len(), 14);
            assert!(normalize(code).is_some());
        }
        assert!(records.iter().all(|r| !codes.iter().any(|c| r.digest.contains(&c.replace('-', "")))));
    }

    #[test]
    fn input_is_forgiving_but_exact() {
        let pepper = Secret::new(b"pepper-pepper-pepper-pepper-pepper".to_vec());
        let (codes, records) = new_set(&pepper);
        let code = &codes[3];
        let sloppy = code.to_uppercase().replace('-', " ");
        assert_eq!(find_unused(&pepper, &records, &sloppy), Some(3));
        assert_eq!(find_unused(&pepper, &records, "0000-0000-0000"), None);
        assert_eq!(find_unused(&pepper, &records, "not a code"), None);
        let other_pepper = Secret::new(b"another-pepper-another-pepper-xx".to_vec());
        assert_eq!(find_unused(&other_pepper, &records, code), None);
        let mut used = records.clone();
        used[3].used_at = Some(1);
        assert_eq!(find_unused(&pepper, &used, code), None, "a used code is spent");
    }

    proptest::proptest! {
        #[test]
        fn normalizing_any_input_is_safe(input in ".{0,40}") {
            if let Some(code) = normalize(&input) {
                proptest::prop_assert_eq!(code.len(), LENGTH);
                proptest::prop_assert!(code.bytes().all(|b| ALPHABET.contains(&b)));
            }
        }
    }
}
