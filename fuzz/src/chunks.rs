//! The chunked-input format shared by the streaming targets.

/// Splits `data` (chunk count, chunk lengths, stream) into the chunks and the whole stream: the
/// input format of the targets that feed bytes in arbitrary pieces.
pub fn split_chunks(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (vec![&[][..]], &[][..]);
    };
    let count = usize::from(count % 16).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let mut chunks = Vec::with_capacity(count + 1);
    let mut remaining = stream;
    for &length in lengths {
        let (chunk, tail) = remaining.split_at(usize::from(length).min(remaining.len()));
        chunks.push(chunk);
        remaining = tail;
    }
    chunks.push(remaining);
    (chunks, stream)
}
