//! Validation of what the router sends: a `Mirror` request's fields and a primary
//! answer's size, checked before anything is sampled, admitted or stored.
//!
//! Owns the wire limits ([`MAX_ID_BYTES`], [`MAX_NAME_BYTES`]) and the rule that every
//! refusal names the offending field. Pure: never touches the config, the pairing
//! table or the network, and never echoes a large input back in an error.

use bytes::Bytes;
use serde::de::IgnoredAny;

use crate::proto::v1::{Answer, MirrorRequest};
use crate::record::{Half, Source};
use crate::sidecar::engine::RequestError;

/// Longest request_id or sampling_key accepted.
pub const MAX_ID_BYTES: usize = 512;
/// Longest route name or slice accepted (slices become Kafka headers and metric labels).
pub const MAX_NAME_BYTES: usize = 128;

/// A request_id is the Kafka key and the shadow call's `x-request-id` header: not
/// empty, bounded, and free of control characters (which no header may carry).
pub(super) fn check_request_id(id: &str) -> Result<(), RequestError> {
    if id.is_empty() {
        return Err(RequestError::invalid("request_id", "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(RequestError::invalid("request_id", format!("longer than {MAX_ID_BYTES} bytes")));
    }
    if id.chars().any(char::is_control) {
        return Err(RequestError::invalid("request_id", "must not contain control characters"));
    }
    Ok(())
}


/// Checks a `Mirror` request; the error names the field.
pub fn validate_request(
    req: &MirrorRequest,
    max_body_bytes: usize,
    max_labels: usize,
    max_label_bytes: usize,
) -> Result<(), RequestError> {
    check_request_id(&req.request_id)?;
    for (field, value, max) in [
        ("sampling_key", &req.sampling_key, MAX_ID_BYTES),
        ("route_taken", &req.route_taken, MAX_NAME_BYTES),
        ("shadow_route", &req.shadow_route, MAX_NAME_BYTES),
        ("slice", &req.slice, MAX_NAME_BYTES),
    ] {
        if value.len() > max {
            return Err(RequestError::invalid(field, format!("longer than {max} bytes")));
        }
    }
    if req.request_body.len() > max_body_bytes {
        return Err(RequestError::invalid(
            "request_body",
            format!("{} bytes is over the limit of {max_body_bytes}", req.request_body.len()),
        ));
    }
    let first = req.request_body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') || serde_json::from_slice::<IgnoredAny>(&req.request_body).is_err() {
        return Err(RequestError::invalid("request_body", "must be a JSON object (an OpenAI chat-completions request)"));
    }
    if req.labels.len() > max_labels {
        return Err(RequestError::invalid("labels", format!("{} labels is over the limit of {max_labels}", req.labels.len())));
    }
    if let Some((k, _)) = req.labels.iter().find(|(k, v)| k.len() > max_label_bytes || v.len() > max_label_bytes) {
        let shown: String = k.chars().take(64).collect();
        return Err(RequestError::invalid("labels", format!("label `{shown}` is longer than {max_label_bytes} bytes")));
    }
    if let Some(p) = &req.primary {
        if p.body.len() > max_body_bytes {
            return Err(RequestError::invalid(
                "primary.body",
                format!("{} bytes is over the limit of {max_body_bytes}", p.body.len()),
            ));
        }
    }
    Ok(())
}

/// The router's answer as a pair half; a body over `max_body_bytes` is dropped and the
/// drop named in the half's error, so one huge answer cannot hold memory in the table.
pub(super) fn half_from_answer(a: Answer, max_body_bytes: usize) -> Half {
    let mut half = Half {
        body: Bytes::from(a.body),
        status_code: a.status_code,
        latency_ms: a.latency_ms,
        error: a.error,
        source: Source::Router,
    };
    if half.body.len() > max_body_bytes {
        half.error = format!("{} (answer body over {max_body_bytes} bytes, dropped)", half.error).trim().to_string();
        half.body = Bytes::new();
    }
    half
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A valid one-phase `Mirror` request (no primary), `r1` taken by `fast`.
    pub(in crate::sidecar) fn req() -> MirrorRequest {
        MirrorRequest {
            request_id: "r1".into(),
            route_taken: "fast".into(),
            request_body: br#"{"messages":[]}"#.to_vec(),
            ..Default::default()
        }
    }

    fn field(r: MirrorRequest) -> &'static str {
        match validate_request(&r, 100, 2, 8) {
            Err(RequestError::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_input_names_its_field() {
        assert!(validate_request(&req(), 100, 2, 8).is_ok());
        assert_eq!(field(MirrorRequest { request_id: String::new(), ..req() }), "request_id");
        assert_eq!(field(MirrorRequest { request_body: b"not json".to_vec(), ..req() }), "request_body");
        assert_eq!(field(MirrorRequest { request_body: b"[1,2]".to_vec(), ..req() }), "request_body");
        assert_eq!(field(MirrorRequest { request_body: b"{\"a\":".to_vec(), ..req() }), "request_body");
        assert_eq!(field(MirrorRequest { request_body: vec![b' '; 101], ..req() }), "request_body");
        let many: HashMap<String, String> = (0..3).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(field(MirrorRequest { labels: many, ..req() }), "labels");
        let long = HashMap::from([("tenant".to_string(), "x".repeat(9))]);
        assert_eq!(field(MirrorRequest { labels: long, ..req() }), "labels");
        let long_key = HashMap::from([("k".repeat(1 << 20), "v".to_string())]);
        match validate_request(&MirrorRequest { labels: long_key, ..req() }, 100, 2, 8) {
            Err(e @ RequestError::InvalidArgument { field: "labels", .. }) => {
                assert!(e.to_string().len() < 200, "a huge key is not echoed back whole")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(field(MirrorRequest { slice: "s".repeat(129), ..req() }), "slice");
        assert_eq!(field(MirrorRequest { route_taken: "r".repeat(129), ..req() }), "route_taken");
        assert_eq!(field(MirrorRequest { sampling_key: "k".repeat(513), ..req() }), "sampling_key");
        assert_eq!(field(MirrorRequest { request_id: "i".repeat(513), ..req() }), "request_id");
        // It travels as an HTTP header to the shadow upstream, where a control character
        // would fail every call.
        assert_eq!(field(MirrorRequest { request_id: "r1\r\nx-evil: 1".into(), ..req() }), "request_id");
        assert_eq!(field(MirrorRequest { request_id: "r\u{7f}".into(), ..req() }), "request_id");
    }
}
