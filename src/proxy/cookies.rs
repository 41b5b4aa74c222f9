//! ferry's own cookies never cross the proxy: a browser sends the dashboard's session cookie
//! to every port of ferry's host, so without this any app would receive it and could act as
//! whoever signed in; and an app must not plant a session of its choosing in the dashboard's
//! browser.

/// True when `pair` (`name=value` of a `Cookie` or `Set-Cookie` header) is one of ferry's own
/// cookies: the dashboard's ([`crate::auth::COOKIES`]) or a canary bucket's
/// ([`super::canary::COOKIE_PREFIX`]: an app must not move a client between releases).
pub fn is_ferry_cookie(pair: &[u8]) -> bool {
    let name = pair
        .split(|b| *b == b'=')
        .next()
        .unwrap_or(pair)
        .trim_ascii();
    name.starts_with(super::canary::COOKIE_PREFIX.as_bytes())
        || crate::auth::COOKIES.iter().any(|c| c.as_bytes() == name)
}

/// A `Cookie` header's value without ferry's own cookies (the app's, joined by `; `; empty
/// when nothing is left). Borrowed as it is when it holds none of ferry's.
pub fn without_ferry_cookies(value: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let pairs = || {
        value
            .split(|b| *b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
    };
    if !pairs().any(is_ferry_cookie) {
        return std::borrow::Cow::Borrowed(value);
    }
    let kept: Vec<&[u8]> = pairs().filter(|pair| !is_ferry_cookie(pair)).collect();
    std::borrow::Cow::Owned(kept.join(&b"; "[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ferry_cookies_are_taken_out() {
        assert_eq!(&*without_ferry_cookies(b"a=1; b=2"), b"a=1; b=2");
        assert_eq!(
            &*without_ferry_cookies(b"a=1; ferry_session=x;b=2"),
            b"a=1; b=2"
        );
        assert!(without_ferry_cookies(b"ferry_session=x").is_empty());
        assert!(is_ferry_cookie(b"ferry_session=planted; Path=/"));
        assert!(!is_ferry_cookie(b"app=2; Path=/"));
        assert!(is_ferry_cookie(b"ferry_canary_production=42"));
        assert_eq!(
            &*without_ferry_cookies(b"a=1; ferry_canary_staging=42"),
            b"a=1"
        );
    }
}
