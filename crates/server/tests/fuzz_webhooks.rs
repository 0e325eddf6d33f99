//! Fuzzing webhook signature verification (`keyhaven_server::verify`), which
//! receivers run on headers anyone can send: any header, body, clock and tolerance
//! is answered without a panic; a signature made by `sign` verifies within the
//! tolerance; any change to the body, the secret, the tag or the timestamp makes
//! it fail. Cases: `PROPTEST_CASES` (default 1,000 per property).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_server::{sign, verify};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1_000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Times, with the edges of `i64`.
fn time() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 1_500_000_000i64..2_000_000_000,
        1 => any::<i64>(),
        1 => proptest::sample::select(vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX]),
    ]
}

/// Signature headers: well-formed, near misses and noise.
fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(t=-?[0-9]{0,20}|v1=[0-9a-fA-F]{0,70}|[a-z0-9]{0,3}=?[^,]{0,10})(, ?(t=-?[0-9]{0,20}|v1=[0-9a-fA-F]{0,70}|[^,]{0,10})){0,4}",
        time().prop_map(|t| format!("t={t},v1=00")),
        time().prop_map(|t| format!("t={t}")),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_header_is_answered_without_a_panic(
        secret in "\\PC{0,20}",
        h in header(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in time(),
        tolerance in time(),
    ) {
        let _ = verify(&secret, &h, &body, now, tolerance);
    }

    #[test]
    fn signatures_verify_and_any_change_refuses(
        secret in "\\PC{1,20}",
        other in "\\PC{1,20}",
        body in prop::collection::vec(any::<u8>(), 0..200),
        at in time(),
        skew in -300i64..=300,
        flip in any::<prop::sample::Index>(),
    ) {
        let h = sign(&secret, at, &body);
        let now = at.saturating_add(skew);
        let within = now.abs_diff(at) <= 300;
        prop_assert_eq!(verify(&secret, &h, &body, now, 300), within);
        if secret != other {
            prop_assert!(!verify(&other, &h, &body, now, 300));
        }
        // Another body.
        let mut changed = body.clone();
        if changed.is_empty() {
            changed.push(b'x');
        } else {
            let i = flip.index(changed.len());
            changed[i] ^= 0x01;
        }
        prop_assert!(!verify(&secret, &h, &changed, now, 300));
        // Another tag: one hex digit changed.
        let (head, tag) = h.split_once(",v1=").unwrap();
        let mut digits: Vec<char> = tag.chars().collect();
        let i = flip.index(digits.len());
        digits[i] = if digits[i] == '0' { '1' } else { '0' };
        let forged = format!("{head},v1={}", digits.into_iter().collect::<String>());
        prop_assert!(!verify(&secret, &forged, &body, now, 300));
        // Another timestamp with the same tag.
        let moved = h.replacen(&format!("t={at}"), &format!("t={}", at.wrapping_add(1)), 1);
        prop_assert!(!verify(&secret, &moved, &body, now, 300));
        // A negative tolerance accepts nothing.
        prop_assert!(!verify(&secret, &h, &body, now, -1));
    }
}

/// Found by the fuzzing above: a timestamp far from `now` made `now - timestamp`
/// overflow, a panic in debug builds (and a wrapped difference in release).
#[test]
fn extreme_timestamps_are_refused_not_a_panic() {
    for (t, now) in [
        (i64::MIN, 1_700_000_000),
        (i64::MAX, -1),
        (1_700_000_000, i64::MIN),
        (i64::MIN, i64::MAX),
    ] {
        let h = sign("s", t, b"body");
        assert!(!verify("s", &h, b"body", now, 300));
        assert!(!verify(
            "s",
            &format!("t={t},v1=00"),
            b"body",
            now,
            i64::MAX
        ));
    }
    assert!(verify("s", &sign("s", i64::MIN, b"b"), b"b", i64::MIN, 0));
    assert!(verify(
        "s",
        &sign("s", i64::MAX, b"b"),
        b"b",
        i64::MAX - 5,
        300
    ));
}
