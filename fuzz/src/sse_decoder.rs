//! Oracle for the `sse_decoder` target: `ccf_tokens::SseDecoder` fed arbitrary bytes split at
//! arbitrary points must never panic and must produce exactly the events (and the same count of
//! dropped oversized events) as when it is fed the whole stream at once.
//!
//! Input format: byte 0 chooses the event size limit (0: the default 16 MiB, otherwise that many
//! bytes, so the drop path is exercised); byte 1 modulo 16 is the number `n` of chunk lengths
//! that follow (one byte each); the rest is the stream, cut into chunks of those lengths (a
//! zero length is an empty chunk) with whatever remains as the last chunk.

use ccf_tokens::{SseDecoder, DEFAULT_MAX_EVENT_BYTES};

use crate::chunks::split_chunks;

/// One decoded event, owned: (event name, data).
type Event = (String, Vec<u8>);

/// Runs one input through the oracle; panics on a property violation.
pub fn check(data: &[u8]) {
    let Some((&limit_byte, rest)) = data.split_first() else {
        return;
    };
    let limit = match limit_byte {
        0 => DEFAULT_MAX_EVENT_BYTES,
        small => usize::from(small),
    };
    let (chunks, stream) = split_chunks(rest);

    let whole = decode(limit, &[stream]);
    let split = decode(limit, &chunks);
    assert_eq!(
        whole,
        split,
        "decoding depends on where the stream is split (limit {limit}, chunk lengths {:?})",
        chunks.iter().map(|chunk| chunk.len()).collect::<Vec<_>>()
    );
    // Feeding one byte at a time is the most extreme split.
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(
        whole,
        decode(limit, &bytes),
        "byte-by-byte decoding differs (limit {limit})"
    );
    // `finish` leaves the decoder ready for a new stream: a second stream decodes the same.
    let mut decoder = SseDecoder::with_max_event_bytes(limit);
    let mut ignored = |_: ccf_tokens::SseEvent<'_>| {};
    decoder.feed(stream, &mut ignored);
    decoder.finish(&mut ignored);
    let dropped_first = decoder.dropped_events();
    let mut again = Vec::new();
    decoder.feed(stream, &mut |event| {
        again.push((event.event.to_string(), event.data.to_vec()))
    });
    decoder.finish(&mut |event| again.push((event.event.to_string(), event.data.to_vec())));
    assert_eq!(whole.0, again, "a reused decoder decodes differently");
    assert_eq!(
        decoder.dropped_events(),
        dropped_first * 2,
        "a reused decoder counts dropped events differently"
    );
    for (_, data) in &whole.0 {
        assert!(
            data.len() <= limit,
            "an event over the limit was dispatched"
        );
    }
}

/// Decodes the chunks in order; returns the events and the dropped-event count.
fn decode(limit: usize, chunks: &[&[u8]]) -> (Vec<Event>, u64) {
    let mut decoder = SseDecoder::with_max_event_bytes(limit);
    let mut events = Vec::new();
    let mut on_event = |event: ccf_tokens::SseEvent<'_>| {
        // `data_str` must accept any bytes.
        let _ = event.data_str();
        events.push((event.event.to_string(), event.data.to_vec()));
    };
    for chunk in chunks {
        decoder.feed(chunk, &mut on_event);
    }
    decoder.finish(&mut on_event);
    (events, decoder.dropped_events())
}
