//! The canary split: during a rollout new requests go to the previous or the new instance
//! by weight, sticky per client.
//!
//! Every client has a bucket, 0..[`BUCKETS`]: the number in its `ferry_canary_<env>` cookie,
//! or with `sticky_header` the hash of that header's value. A client whose bucket, shifted
//! by the rollout's salt, is below `weight × 100` goes to the new instance. Raising the
//! weight only adds buckets, so a client on the new release stays there until the end; a
//! salt per rollout means the first 10% of one rollout are not always the same people. A
//! request with neither gets a random bucket, and its response the cookie that keeps it.

use std::sync::Arc;

use super::upstream::Upstream;
use crate::config::Sticky;

/// Buckets a client can fall into: a weight of 1% is 100 of them.
pub const BUCKETS: u16 = 10_000;

/// The name every canary cookie starts with (ferry's own: the app never sees it).
pub const COOKIE_PREFIX: &str = "ferry_canary_";

/// How long a client keeps its bucket: longer than any rollout, so it never flips sides.
const COOKIE_MAX_AGE: u32 = 7 * 24 * 3600;

/// The cookie holding an environment's bucket.
pub fn cookie_name(environment: &str) -> String {
    format!("{COOKIE_PREFIX}{environment}")
}

/// A rollout's split of new requests.
pub struct Split {
    /// The new instance.
    pub(super) upstream: Arc<Upstream>,
    /// Buckets (after the salt) below this go to the new instance: the weight × 100.
    pub(super) below: u16,
    pub(super) salt: u16,
    pub(super) cookie: String,
    /// With `sticky_header`: its lowercase name.
    pub(super) header: Option<String>,
}

impl Split {
    pub fn new(
        upstream: Arc<Upstream>,
        weight: u8,
        salt: u16,
        environment: &str,
        sticky: &Sticky,
    ) -> Split {
        Split {
            upstream,
            below: u16::from(weight.min(100)) * 100,
            salt: salt % BUCKETS,
            cookie: cookie_name(environment),
            header: match sticky {
                Sticky::Cookie => None,
                Sticky::Header(h) => Some(h.clone()),
            },
        }
    }

    /// The percentage of clients that go to the new instance.
    pub fn weight(&self) -> u8 {
        (self.below / 100) as u8
    }

    /// True when a client in `bucket` goes to the new instance.
    pub fn takes(&self, bucket: u16) -> bool {
        (bucket % BUCKETS + self.salt) % BUCKETS < self.below
    }

    /// The bucket a request already has: its sticky header's value hashed, else the number
    /// in its cookie. `headers()`: the request's (name, value) pairs.
    pub fn bucket_of<'a, H>(&self, headers: impl Fn() -> H) -> Option<u16>
    where
        H: Iterator<Item = (&'a [u8], &'a [u8])>,
    {
        if let Some(name) = &self.header
            && let Some(value) = headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v.trim_ascii())
                .find(|v| !v.is_empty())
        {
            return Some(hash_bucket(value));
        }
        headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
            .find_map(|(_, v)| cookie_bucket(v, &self.cookie))
    }
}

/// The bucket `value` (a sticky header's) hashes into: SHA-256, so a client keeps its bucket
/// across ferry builds (std's `DefaultHasher` may change between Rust releases).
pub fn hash_bucket(value: &[u8]) -> u16 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(value);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u16
}

/// The bucket in cookie `name` of a `Cookie` header's value, when it holds a sane one.
pub fn cookie_bucket(value: &[u8], name: &str) -> Option<u16> {
    value.split(|b| *b == b';').find_map(|pair| {
        let (n, v) = pair
            .trim_ascii()
            .split_at(pair.trim_ascii().iter().position(|b| *b == b'=')?);
        if n.trim_ascii() != name.as_bytes() {
            return None;
        }
        let v = v[1..].trim_ascii();
        if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u16 = std::str::from_utf8(v).ok()?.parse().ok()?;
        (n < BUCKETS).then_some(n)
    })
}

/// A new client's bucket, drawn at random.
pub fn random_bucket() -> u16 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        // no randomness: the clock's nanoseconds spread clients well enough
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        b = nanos.to_le_bytes();
    }
    (u32::from_le_bytes(b) % u32::from(BUCKETS)) as u16
}

/// The `Set-Cookie` value that keeps a client in `bucket`.
pub fn set_cookie(name: &str, bucket: u16) -> String {
    format!("{name}={bucket}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax")
}

/// Adds `Set-Cookie: cookie` to a complete response head (ending in an empty line).
pub(super) fn add_set_cookie(head: &mut Vec<u8>, cookie: &str) {
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
        head.extend_from_slice(b"set-cookie: ");
        head.extend_from_slice(cookie.as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weight: u8, salt: u16, sticky: &Sticky) -> Split {
        let upstream = Upstream::new("127.0.0.1:1".parse().unwrap());
        Split::new(upstream, weight, salt, "production", sticky)
    }

    #[test]
    fn a_weight_takes_its_share_of_buckets_and_raising_it_moves_nobody_back() {
        for salt in [0, 1, 4321, 9999] {
            let mut on_new_before = vec![false; BUCKETS as usize];
            for weight in [0u8, 1, 10, 50, 99, 100] {
                let s = split(weight, salt, &Sticky::Cookie);
                let taken: Vec<bool> = (0..BUCKETS).map(|b| s.takes(b)).collect();
                let count = taken.iter().filter(|t| **t).count();
                assert_eq!(
                    count,
                    usize::from(weight) * 100,
                    "weight {weight} salt {salt}"
                );
                for (b, was) in on_new_before.iter().enumerate() {
                    assert!(!was || taken[b], "bucket {b} moved back at {weight}%");
                }
                on_new_before = taken;
            }
        }
        assert_eq!(split(37, 5, &Sticky::Cookie).weight(), 37);
    }

    #[test]
    fn buckets_come_from_the_cookie_or_the_sticky_header() {
        let s = split(10, 0, &Sticky::Cookie);
        let with_cookie: &[(&[u8], &[u8])] = &[
            (b"host", b"x"),
            (b"Cookie", b"a=1; ferry_canary_production=42; b=2"),
        ];
        assert_eq!(s.bucket_of(|| with_cookie.iter().copied()), Some(42));
        for bad in [
            &b"ferry_canary_production=10000"[..],
            b"ferry_canary_production=-1",
            b"ferry_canary_production=",
            b"ferry_canary_staging=5",
            b"ferry_canary_production=123456",
            b"x",
        ] {
            assert_eq!(
                cookie_bucket(bad, "ferry_canary_production"),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            cookie_bucket(b"ferry_canary_production= 7 ", "ferry_canary_production"),
            Some(7)
        );

        let s = split(10, 0, &Sticky::Header("x-user-id".into()));
        let with_user: &[(&[u8], &[u8])] = &[
            (b"X-User-Id", b" alice "),
            (b"cookie", b"ferry_canary_production=42"),
        ];
        assert_eq!(
            s.bucket_of(|| with_user.iter().copied()),
            Some(hash_bucket(b"alice"))
        );
        // the same bucket from every ferry build: a fixed function of the value
        assert_eq!(hash_bucket(b"alice"), 207);
        // without the header: the cookie; with neither: none
        assert_eq!(s.bucket_of(|| with_cookie.iter().copied()), Some(42));
        assert_eq!(s.bucket_of(|| with_cookie[..1].iter().copied()), None);
    }

    #[test]
    fn random_buckets_spread_and_the_cookie_reads_back() {
        let draws: Vec<u16> = (0..2000).map(|_| random_bucket()).collect();
        assert!(draws.iter().all(|b| *b < BUCKETS));
        let low = draws.iter().filter(|b| **b < 5000).count();
        assert!((800..1200).contains(&low), "{low} of 2000 below half");
        let header = set_cookie("ferry_canary_staging", 1234);
        assert!(
            header.starts_with("ferry_canary_staging=1234; Path=/;"),
            "{header}"
        );
        assert_eq!(
            cookie_bucket(
                header.split(';').next().unwrap().as_bytes(),
                "ferry_canary_staging"
            ),
            Some(1234)
        );
    }
}
