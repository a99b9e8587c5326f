//! Oracle for the `count_tokens_estimator` target: `ccf_tokens::estimate_input_tokens` on
//! arbitrary request bodies.
//!
//! Properties: no panic; the result is `Ok` exactly when the body is a JSON object; a ratio that
//! is not a positive finite number behaves as the default 4.0; a larger ratio (fewer tokens per
//! ASCII character) never gives more tokens.
//!
//! Input format: byte 0 picks the ratio (0: NaN, 1: -1.0, 2: infinity, 3: 0.0, otherwise
//! `byte / 16`); the rest is the body.

use ccf_tokens::estimate_input_tokens;

/// Runs one input through the oracle; panics on a property violation.
pub fn check(data: &[u8]) {
    let Some((&ratio_byte, body)) = data.split_first() else {
        return;
    };
    let ratio = match ratio_byte {
        0 => f64::NAN,
        1 => -1.0,
        2 => f64::INFINITY,
        3 => 0.0,
        other => f64::from(other) / 16.0,
    };
    let is_object = is_json_object(body);
    let estimate = estimate_input_tokens(body, ratio);
    match &estimate {
        Ok(_) => assert!(is_object, "estimated a body that is not a JSON object"),
        Err(error) => {
            assert!(!is_object, "refused a JSON object: {error}");
            let _ = error.to_string();
        }
    }
    let Ok(tokens) = estimate else {
        return;
    };
    let default = estimate_input_tokens(body, 4.0).expect("the same body parsed a moment ago");
    if !(ratio.is_finite() && ratio > 0.0) {
        assert_eq!(tokens, default, "an invalid ratio must behave as 4.0");
    } else {
        let coarser = estimate_input_tokens(body, ratio * 2.0).expect("the same body parsed");
        assert!(
            coarser <= tokens,
            "doubling the ratio raised the estimate ({tokens} -> {coarser})"
        );
    }
}

/// Whether `body` is a JSON object, by `serde_json` (the parser the estimator uses too).
fn is_json_object(body: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(body),
        Ok(serde_json::Value::Object(_))
    )
}
