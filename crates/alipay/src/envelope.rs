//! The envelope of an Alipay answer and its signature check.
//!
//! An answer body is one JSON object: the answer under `<method>_response` (or
//! `error_response`) and `sign`, Alipay's RSA2 signature over the **exact bytes** of that
//! answer as sent, from its opening brace to its closing one, whitespace and escapes
//! included (the official SDKs cut the same span out of the body text). So the envelope
//! is read with serde_json's [`RawValue`]: every member's value stays the slice of the
//! body it was, the signature is checked over that slice and nothing is re-serialized.
//! Only a verified answer is read further, into the typed answers of `answer.rs`.
//!
//! What is not trusted: a body that is not one JSON object (trailing bytes included), an
//! answer member that is missing, given twice or not an object, and a `sign` that is
//! missing, empty, given twice or not a string.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use order_closer_gateway::GatewayError;
use order_closer_gateway::rsa::RsaPublicKey;

/// The top-level members of a body, in body order: each name (unescaped) with the exact
/// text of its value.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    members.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

impl<'a> Members<'a> {
    /// Reads `body` (a leading byte-order mark allowed); `None` unless the whole body is
    /// one JSON object.
    fn read(body: &'a str) -> Option<Self> {
        let body = body.strip_prefix('\u{feff}').unwrap_or(body);
        serde_json::from_str(body).ok()
    }

    /// The text of the one member called `name`; `None` if absent or given twice.
    fn unique(&self, name: &str) -> Option<&'a str> {
        let mut found = self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.get());
        match (found.next(), found.next()) {
            (Some(v), None) => Some(v),
            _ => None,
        }
    }

    /// The one member `name` whose value is an object: its exact text.
    fn object(&self, name: &str) -> Option<&'a str> {
        self.unique(name).filter(|v| v.starts_with('{'))
    }

    /// The one `sign` member, decoded, if it is a string.
    fn sign(&self) -> Option<String> {
        serde_json::from_str::<String>(self.unique("sign")?).ok()
    }
}

/// Returns the exact raw text of the top-level member `key`'s object value, from `{` to
/// the matching `}`, as it appears in `body` (what Alipay's signature covers).
///
/// `None` when the body is not one complete JSON object, the member is missing, appears
/// twice, or is not an object. Never panics, whatever the input.
pub fn extract_signed_object<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    Members::read(body)?.object(key)
}

/// Returns the decoded top-level `sign` string, if there is exactly one and it is a string.
pub fn extract_sign(body: &str) -> Option<String> {
    Members::read(body)?.sign()
}

/// A body cut into the parts the signature check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Which member held the answer (for example `alipay_trade_query_response` or
    /// `error_response`).
    pub key: &'a str,
    /// The raw answer object, byte-exact.
    pub object: &'a str,
    /// The decoded `sign`, when present.
    pub sign: Option<String>,
}

impl<'a> Envelope<'a> {
    /// Cuts a body once: finds the first of `keys` present as a top-level object member,
    /// and the top-level `sign`. `None` when the body is not one JSON object or holds none
    /// of the keys (or each of them twice).
    pub fn split(body: &'a str, keys: &[&'a str]) -> Option<Self> {
        let members = Members::read(body)?;
        let (key, object) = keys
            .iter()
            .find_map(|k| members.object(k).map(|v| (*k, v)))?;
        Some(Envelope {
            key,
            object,
            sign: members.sign(),
        })
    }

    /// Checks the signature over the answer object with Alipay's public key.
    ///
    /// Retryable `unsigned_answer` without a (non-empty) `sign`; retryable
    /// `bad_signature` when it does not verify. The error names the member and the key's
    /// fingerprint, never the signature.
    pub fn verify(&self, alipay_key: &RsaPublicKey) -> Result<(), GatewayError> {
        let Some(sign) = self.sign.as_deref().filter(|s| !s.is_empty()) else {
            tracing::debug!(key = self.key, "unsigned alipay answer ignored");
            return Err(GatewayError::retryable(
                "unsigned_answer",
                format!("{} without sign; not trusted", self.key),
            ));
        };
        if !alipay_key.verify_base64(self.object.as_bytes(), sign) {
            tracing::debug!(key = self.key, "alipay answer signature mismatch");
            return Err(GatewayError::retryable(
                "bad_signature",
                format!(
                    "{} signature does not verify with the configured Alipay public key ({})",
                    self.key,
                    alipay_key.fingerprint()
                ),
            ));
        }
        Ok(())
    }
}

/// Cuts the answer to a call out of `body` (under `response_key`, or `error_response`)
/// and checks its signature: the answer object exactly as signed, and its member.
///
/// Retryable `unparseable` when the body is not one JSON object holding either member
/// (the error shows its length and first 60 characters: an HTML page, say); then the
/// errors of [`Envelope::verify`].
pub fn verified<'a>(
    body: &'a str,
    response_key: &'a str,
    alipay_key: &RsaPublicKey,
) -> Result<Envelope<'a>, GatewayError> {
    let envelope = Envelope::split(body, &[response_key, crate::request::ERROR_RESPONSE])
        .ok_or_else(|| {
            GatewayError::retryable(
                "unparseable",
                format!(
                    "answer is not a JSON object with {response_key} or error_response \
                     ({} bytes, starts {:?})",
                    body.len(),
                    body.chars().take(60).collect::<String>()
                ),
            )
        })?;
    envelope.verify(alipay_key)?;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer_gateway::FaultClass;
    use order_closer_gateway::rsa::RsaPrivateKey;
    use serde_json::Value;

    const KEY: &str = "alipay_trade_query_response";

    #[test]
    fn extracts_exact_raw_bytes() {
        let object = "{ \"code\" : \"10000\",\n  \"msg\":\"Success\", \"sub_msg\":\"交易不存在 \\\"q\\\" {}}{ \\\\\", \"n\": {\"a\":[1,{\"b\":\"}\"}]}, \"x\": -1.5e3 }";
        let body = format!("  {{\"{KEY}\" :\t{object} , \"sign\":\"abc\\/def==\"}}\n");
        assert_eq!(extract_signed_object(&body, KEY), Some(object));
        assert_eq!(extract_sign(&body).as_deref(), Some("abc/def=="));
        // The raw object is valid JSON on its own.
        let v: Value = serde_json::from_str(extract_signed_object(&body, KEY).unwrap()).unwrap();
        assert_eq!(v["sub_msg"], "交易不存在 \"q\" {}}{ \\");
    }

    #[test]
    fn escapes_and_unicode_stay_as_sent() {
        // `\/`, `\u4ea4` and a raw multi-byte character are signed as they were sent, not
        // as they decode.
        let object = r#"{"sub_msg":"\u4ea4\u6613 交易 a\/b \t","url":"http:\/\/x"}"#;
        let body = format!("\u{feff}{{\"{KEY}\":{object},\"sign\":\"s\"}}");
        assert_eq!(extract_signed_object(&body, KEY), Some(object));
    }

    #[test]
    fn extracts_error_response_and_sign_before_object() {
        let body = r#"{"sign":"SIG","error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}}"#;
        assert_eq!(
            extract_signed_object(body, "error_response"),
            Some(r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}"#)
        );
        assert_eq!(extract_signed_object(body, KEY), None);
        assert_eq!(extract_sign(body).as_deref(), Some("SIG"));
        let split = Envelope::split(body, &[KEY, "error_response"]).unwrap();
        assert_eq!(split.key, "error_response");
        assert_eq!(split.sign.as_deref(), Some("SIG"));
    }

    #[test]
    fn unsigned_body_has_no_sign() {
        let body = r#"{"error_response":{"code":"40002"}}"#;
        assert!(extract_signed_object(body, "error_response").is_some());
        assert_eq!(extract_sign(body), None);
        // A non-string sign is no sign, and neither is one given twice.
        assert_eq!(extract_sign(r#"{"sign":12,"a":{}}"#), None);
        assert_eq!(extract_sign(r#"{"sign":"a","sign":"a"}"#), None);
    }

    #[test]
    fn only_top_level_members_count() {
        let body = r#"{"outer":{"alipay_trade_query_response":{"fake":1}},"alipay_trade_query_response":{"real":2},"sign":"s"}"#;
        assert_eq!(extract_signed_object(body, KEY), Some(r#"{"real":2}"#));
        // A key that is only inside a string value is not a member.
        let body = r#"{"note":"\"alipay_trade_query_response\":{}","sign":"s"}"#;
        assert_eq!(extract_signed_object(body, KEY), None);
        // Duplicated member: ambiguous, refused.
        let body = r#"{"r":{"a":1},"r":{"a":2}}"#;
        assert_eq!(extract_signed_object(body, "r"), None);
        // Not an object value.
        assert_eq!(extract_signed_object(r#"{"r":"{}"}"#, "r"), None);
        assert_eq!(extract_signed_object(r#"{"r":[{}]}"#, "r"), None);
        // A duplicated answer member falls to the next key asked for.
        let body = r#"{"r":{"a":1},"r":{"a":2},"error_response":{"e":1}}"#;
        assert_eq!(
            Envelope::split(body, &["r", "error_response"]).map(|e| e.key),
            Some("error_response")
        );
    }

    #[test]
    fn hostile_bodies_give_none() {
        let cases: Vec<String> = vec![
            String::new(),
            "   ".into(),
            "<html><body>502 Bad Gateway</body></html>".into(),
            r#"{"alipay_trade_query_response":{"code":"10000""#.into(),
            r#"{"alipay_trade_query_response":{"code":"10000"},"sign":"ab"#.into(),
            r#"{"alipay_trade_query_response":{"code":"10000"},"sign":"ab""#.into(),
            r#"{"alipay_trade_query_response":{"a":"\"}"#.into(),
            r#"{"alipay_trade_query_response":{"a":[}]}}"#.into(),
            r#"{"alipay_trade_query_response":{"a":1}} trailing"#.into(),
            r#"{"alipay_trade_query_response":{"a":1}}{"#.into(),
            r#"{alipay_trade_query_response:{}}"#.into(),
            r#"{"alipay_trade_query_response" {}}"#.into(),
            r#"{"alipay_trade_query_response":{},,"sign":"x"}"#.into(),
            r#"{"alipay_trade_query_response":@}"#.into(),
            r#"{"alipay_trade_query_response":{"a":tru}}"#.into(),
            r#"{"alipay_trade_query_response":{"a":"\q"}}"#.into(),
            "{\"alipay_trade_query_response\":{\"a\":\"line\nbreak\"}}".into(),
            "[{\"alipay_trade_query_response\":{}}]".into(),
            "{\"a\":\"\\".into(),
            "{".repeat(100_000),
            format!("{{\"{KEY}\":{}{}}}", "[".repeat(5000), "]".repeat(5000)),
            format!("{{\"{KEY}\":\"{}", "x".repeat(1_000_000)),
        ];
        for body in &cases {
            assert_eq!(extract_signed_object(body, KEY), None, "{:.80}", body);
            assert_eq!(extract_sign(body), None);
        }
        // Deep but bounded nesting inside the object is still fine.
        let deep = format!(
            "{{\"{KEY}\":{{\"a\":{}{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(extract_signed_object(&deep, KEY).is_some());
    }

    #[test]
    fn never_panics_on_prefixes_of_a_real_body() {
        let body = "{\"alipay_trade_query_response\":{\"code\":\"40004\",\"sub_msg\":\"交易不存在\\\"\"},\"sign\":\"x\"}";
        for (i, _) in body.char_indices() {
            assert_eq!(extract_signed_object(&body[..i], KEY), None);
        }
        assert!(extract_signed_object(body, KEY).is_some());
        // Arbitrary byte soup.
        let soup = "{\"\\\u{1}\"}\\]{[\"\u{0}你好\\u00\"";
        for (i, _) in soup.char_indices() {
            let _ = extract_signed_object(&soup[i..], "a");
            let _ = extract_sign(&soup[..i]);
        }
    }

    #[test]
    fn the_signature_covers_the_answer_as_sent() {
        let alipay = RsaPrivateKey::generate().unwrap();
        let other = RsaPrivateKey::generate().unwrap();
        let object = "{\"code\":\"10000\",  \"msg\":\"Success\",\"url\":\"http:\\/\\/x\"}";
        let body = |sign: &str| format!("{{\"{KEY}\":{object},\"sign\":\"{sign}\"}}");
        let good = body(&alipay.sign_base64(object.as_bytes()).unwrap());
        let envelope = verified(&good, KEY, alipay.public_key()).unwrap();
        assert_eq!((envelope.key, envelope.object), (KEY, object));

        let code = |body: &str, key: &RsaPrivateKey| {
            let e = verified(body, KEY, key.public_key()).unwrap_err();
            assert_eq!(e.class, FaultClass::Retryable);
            assert!(!e.message.contains("sign\""), "{e}");
            e.code
        };
        assert_eq!(code(&good, &other), "bad_signature");
        // The same answer re-serialized (whitespace or escapes changed) does not verify.
        let compact = good.replace(",  \"msg\"", ",\"msg\"");
        assert_eq!(code(&compact, &alipay), "bad_signature");
        let unescaped = good.replace("http:\\/\\/x", "http://x");
        assert_eq!(code(&unescaped, &alipay), "bad_signature");
        assert_eq!(code(&body(""), &alipay), "unsigned_answer");
        assert_eq!(
            code(&format!("{{\"{KEY}\":{object}}}"), &alipay),
            "unsigned_answer"
        );
        assert_eq!(code("<html>busy</html>", &alipay), "unparseable");
        assert_eq!(
            code(&format!("{{\"{KEY}\":{object}"), &alipay),
            "unparseable"
        );
        // An error_response is verified the same way.
        let error = "{\"code\":\"40002\",\"sub_code\":\"isv.invalid-signature\"}";
        let signed = format!(
            "{{\"error_response\":{error},\"sign\":\"{}\"}}",
            alipay.sign_base64(error.as_bytes()).unwrap()
        );
        let envelope = verified(&signed, KEY, alipay.public_key()).unwrap();
        assert_eq!((envelope.key, envelope.object), ("error_response", error));
    }
}
