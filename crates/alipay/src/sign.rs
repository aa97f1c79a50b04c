//! The text Alipay signs: parameters sorted by key and joined as `k=v&k=v`, for requests
//! (`sign` excluded) and for async notifications (`sign` and `sign_type` excluded).

use order_closer_gateway::rsa::{KeyError, RsaPrivateKey, RsaPublicKey};

/// One key/value parameter, however the caller holds it: `(String, String)`,
/// `(&str, &str)`, a reference to either, or a map entry `(&String, &String)`.
pub trait Param {
    /// The parameter name.
    fn key(&self) -> &str;
    /// The parameter value.
    fn value(&self) -> &str;
}

impl<K: AsRef<str>, V: AsRef<str>> Param for (K, V) {
    fn key(&self) -> &str {
        self.0.as_ref()
    }
    fn value(&self) -> &str {
        self.1.as_ref()
    }
}

impl<P: Param + ?Sized> Param for &P {
    fn key(&self) -> &str {
        (**self).key()
    }
    fn value(&self) -> &str {
        (**self).value()
    }
}

/// Builds the content to sign or verify, leaving out the keys in `skip` and empty values;
/// sorted by key in byte order, values raw (not URL-encoded).
fn content<I>(params: I, skip: &[&str]) -> String
where
    I: IntoIterator,
    I::Item: Param,
{
    let mut kept: Vec<I::Item> = params
        .into_iter()
        .filter(|p| !p.value().is_empty() && !skip.contains(&p.key()))
        .collect();
    // `str` ordering is byte order; the sort is stable, so duplicate keys keep their order.
    kept.sort_by(|a, b| a.key().cmp(b.key()));
    let mut out = String::new();
    for (i, p) in kept.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(p.key());
        out.push('=');
        out.push_str(p.value());
    }
    out
}

/// The signing content of a request: every parameter except `sign` (`sign_type` stays),
/// empty values dropped, sorted by key, joined `k=v` with `&`, values raw.
///
/// Accepts anything that iterates parameters: `&[(String, String)]`, `&Vec<(&str, &str)>`,
/// `&BTreeMap<String, String>`, `&HashMap<..>`...
pub fn signing_content<I>(params: I) -> String
where
    I: IntoIterator,
    I::Item: Param,
{
    content(params, &["sign"])
}

/// The signing content of an async notification: like [`signing_content`] but `sign_type`
/// is dropped as well.
pub fn notify_signing_content<I>(params: I) -> String
where
    I: IntoIterator,
    I::Item: Param,
{
    content(params, &["sign", "sign_type"])
}

/// Signs request parameters: returns the base64 RSA2 signature to put into `sign`.
pub fn sign_params<I>(key: &RsaPrivateKey, params: I) -> Result<String, KeyError>
where
    I: IntoIterator,
    I::Item: Param,
{
    key.sign_base64(signing_content(params).as_bytes())
}

/// Verifies request parameters that carry their own `sign` (what the simulator checks).
/// A missing, empty or duplicated `sign` fails.
pub fn verify_params<P: Param>(key: &RsaPublicKey, params: &[P]) -> bool {
    verify_with(key, params, &["sign"])
}

/// Verifies async-notification parameters (`sign` and `sign_type` left out of the content).
/// A missing, empty or duplicated `sign` fails. The caller must still check `app_id`,
/// `out_trade_no` and `total_amount` against the order.
pub fn verify_notify_params<P: Param>(key: &RsaPublicKey, params: &[P]) -> bool {
    verify_with(key, params, &["sign", "sign_type"])
}

fn verify_with<P: Param>(key: &RsaPublicKey, params: &[P], skip: &[&str]) -> bool {
    let mut signs = params
        .iter()
        .filter(|p| p.key() == "sign")
        .map(|p| p.value());
    let (Some(sign), None) = (signs.next(), signs.next()) else {
        // No signature, or an ambiguous duplicate one.
        return false;
    };
    if sign.is_empty() {
        return false;
    }
    key.verify_base64(content(params, skip).as_bytes(), sign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sorts_by_key_bytes_and_joins_raw() {
        let p = pairs(&[
            ("timestamp", "2026-11-21 10:55:16"),
            ("app_id", "2021000000000001"),
            ("biz_content", r#"{"out_trade_no":"A&B=1"}"#),
            ("Zeta", "upper sorts first"),
            ("method", "alipay.trade.query"),
        ]);
        assert_eq!(
            signing_content(&p),
            "Zeta=upper sorts first&app_id=2021000000000001&biz_content={\"out_trade_no\":\"A&B=1\"}&method=alipay.trade.query&timestamp=2026-11-21 10:55:16"
        );
    }

    #[test]
    fn drops_empty_values_and_sign_keeps_sign_type() {
        let p = pairs(&[
            ("b", "2"),
            ("empty", ""),
            ("sign", "SIGNATURE"),
            ("sign_type", "RSA2"),
            ("a", "1"),
        ]);
        assert_eq!(signing_content(&p), "a=1&b=2&sign_type=RSA2");
        assert_eq!(notify_signing_content(p.as_slice()), "a=1&b=2");
        let borrowed = [("b", "2"), ("sign", "x"), ("a", "1")];
        assert_eq!(signing_content(borrowed), "a=1&b=2");
    }

    #[test]
    fn accepts_maps() {
        let mut bt = BTreeMap::new();
        bt.insert("method".to_owned(), "x".to_owned());
        bt.insert("app_id".to_owned(), "1".to_owned());
        bt.insert("sign".to_owned(), "s".to_owned());
        assert_eq!(signing_content(&bt), "app_id=1&method=x");
        let hm: HashMap<&str, &str> = [("z", "1"), ("a", "2"), ("sign_type", "RSA2")].into();
        assert_eq!(signing_content(&hm), "a=2&sign_type=RSA2&z=1");
        assert_eq!(notify_signing_content(&hm), "a=2&z=1");
    }

    #[test]
    fn sign_and_verify_params() {
        let key = RsaPrivateKey::generate().unwrap();
        let mut p = pairs(&[
            ("app_id", "1"),
            ("method", "alipay.trade.query"),
            ("sign_type", "RSA2"),
        ]);
        let sign = sign_params(&key, &p).unwrap();
        p.push(("sign".to_owned(), sign.clone()));
        assert!(verify_params(key.public_key(), &p));
        // Not valid as a notify (sign_type is not part of the content there).
        assert!(!verify_notify_params(key.public_key(), &p));
        // Tampering, a missing sign and a duplicate sign all fail.
        let mut tampered = p.clone();
        tampered[0].1 = "2".to_owned();
        assert!(!verify_params(key.public_key(), &tampered));
        assert!(!verify_params(key.public_key(), &p[..3]));
        let mut dup = p.clone();
        dup.push(("sign".to_owned(), sign));
        assert!(!verify_params(key.public_key(), &dup));

        let notify = pairs(&[("out_trade_no", "A1"), ("trade_status", "TRADE_SUCCESS")]);
        let nsign = key
            .sign_base64(notify_signing_content(&notify).as_bytes())
            .unwrap();
        let mut notify = notify;
        notify.push(("sign_type".to_owned(), "RSA2".to_owned()));
        notify.push(("sign".to_owned(), nsign));
        assert!(verify_notify_params(key.public_key(), &notify));
    }
}
