//! Fuzzing stored credential blobs (`KeyRing::decrypt`), which a store reads back
//! from a database anyone with file access could have edited: any bytes, and any
//! change to a real blob (a bit flipped, bytes cut, added or spliced in, the key
//! id rewritten), are refused with an error or, never otherwise, decrypt to the
//! very plaintext that was written; a blob read for another row is refused; master
//! keys from any text are accepted or refused without a panic. Cases:
//! `PROPTEST_CASES` (default 500 per property).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_store::{KeyRing, MasterKey};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(500);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn ring(seed: u8) -> KeyRing {
    KeyRing::new(
        MasterKey::from_bytes([seed; 32]),
        [MasterKey::from_bytes([seed ^ 0xff; 32])],
    )
}

/// A change to a blob.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Extend(Vec<u8>),
    Splice(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index),
    KeyIdLength(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..20).prop_map(Mutation::Extend),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..8)
        )
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        any::<u8>().prop_map(Mutation::KeyIdLength),
    ]
}

fn apply(blob: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = blob.to_vec();
    match m {
        Mutation::Flip(i, x) => {
            let i = i.index(b.len());
            b[i] ^= x;
        }
        Mutation::Truncate(i) => b.truncate(i.index(b.len())),
        Mutation::Extend(more) => b.extend_from_slice(more),
        Mutation::Splice(i, bytes) => {
            let i = i.index(b.len() + 1);
            b.splice(i..i, bytes.iter().copied());
        }
        Mutation::Remove(i) => {
            b.remove(i.index(b.len()));
        }
        Mutation::KeyIdLength(n) => {
            if let Some(len) = b.get_mut(3) {
                *len = *n;
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..120), kh1 in any::<bool>(), aad in "\\PC{0,20}") {
        let ring = ring(1);
        let mut bytes = bytes;
        if kh1 {
            // Past the magic, to reach the key id and nonce checks.
            let mut b = b"KH1".to_vec();
            b.extend_from_slice(&bytes);
            bytes = b;
        }
        prop_assert!(ring.decrypt(&aad, &bytes).is_err());
        let _ = KeyRing::key_id_of(&bytes);
    }

    #[test]
    fn written_blobs_read_back_and_changed_ones_never_read_otherwise(
        plaintext in prop::collection::vec(any::<u8>(), 0..300),
        aad in "[a-z_.:0-9]{1,30}",
        other_aad in "[a-z_.:0-9]{1,30}",
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let ring = ring(7);
        let blob = ring.encrypt(&aad, &plaintext).unwrap();
        prop_assert_eq!(&*ring.decrypt(&aad, &blob).unwrap(), plaintext.as_slice());
        if other_aad != aad {
            prop_assert!(ring.decrypt(&other_aad, &blob).is_err(), "another row's blob");
        }
        prop_assert!(KeyRing::new(MasterKey::from_bytes([8; 32]), []).decrypt(&aad, &blob).is_err());
        let mut changed = blob.clone();
        for m in &mutations {
            if changed.is_empty() {
                break;
            }
            changed = apply(&changed, m);
        }
        match ring.decrypt(&aad, &changed) {
            Ok(read) => {
                prop_assert_eq!(&changed, &blob, "only the blob as written decrypts");
                prop_assert_eq!(&*read, plaintext.as_slice());
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains(&aad), "{}", text);
            }
        }
    }

    #[test]
    fn master_keys_from_any_text(text in prop_oneof![any::<String>(), "[A-Za-z0-9+/=]{0,60}"]) {
        match MasterKey::from_base64(&text) {
            Ok(key) => {
                let shown = format!("{key:?}");
                prop_assert!(!shown.contains(text.trim().trim_end_matches('=')));
            }
            Err(e) => prop_assert!(e.to_string().contains("32 bytes")),
        }
    }
}
