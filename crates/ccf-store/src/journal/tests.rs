#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::record::status;

fn final_record(id: &str, cost_total: i64) -> StoredRecord {
    let mut record = UsageRecord::new(
        id,
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
    );
    record.status = status::COMPLETED.into();
    record.is_final = true;
    record.model_name = Some("claude-sonnet-4".into());
    record.usage.input_tokens = 1000;
    record.usage.cache_creation_1h_input_tokens = 7;
    record.end_time = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_001));
    record.last_failure_reason = Some("line\nbreak \"quoted\"".into());
    StoredRecord::with_cost(record, Cost::new(cost_total, 0, 0, 0))
}

async fn read_all(journal: &Journal) -> JournalBatch {
    journal.read_from(0, usize::MAX).await.unwrap()
}

#[tokio::test]
async fn appended_records_read_back_whole_with_the_cost_they_were_given() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("sub/j.jsonl");
    let mut journal = Journal::open(&path).await.unwrap();
    assert_eq!((journal.records(), journal.bytes()), (0, 0));
    let written = vec![final_record("req-1", 111), final_record("req-2", 222)];
    journal.append(&written).await.unwrap();
    assert_eq!(journal.records(), 2);
    assert_eq!(journal.bytes(), std::fs::metadata(&path).unwrap().len());
    let batch = read_all(&journal).await;
    assert_eq!(batch.records, written);
    assert_eq!(batch.skipped, 0);
    assert_eq!(batch.next_offset, journal.bytes());

    // A later run finds and counts them.
    let reopened = Journal::open(&path).await.unwrap();
    assert_eq!(reopened.records(), 2);
    assert_eq!(reopened.bytes(), journal.bytes());
}

#[tokio::test]
async fn a_torn_last_line_is_skipped_alone_and_the_next_append_starts_a_new_line() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("j.jsonl");
    let mut journal = Journal::open(&path).await.unwrap();
    journal.append(&[final_record("req-1", 1)]).await.unwrap();
    // A crash in the middle of the next append.
    let whole = serde_json::to_vec(&JournalLine::from(&final_record("req-torn", 2))).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, &whole[..whole.len() / 2]).unwrap();
    drop(file);

    let mut journal = Journal::open(&path).await.unwrap();
    assert_eq!(journal.records(), 1, "the torn line is not a record");
    journal.append(&[final_record("req-3", 3)]).await.unwrap();
    let batch = read_all(&journal).await;
    let ids: Vec<&str> = batch
        .records
        .iter()
        .map(|stored| stored.record().request_id.as_str())
        .collect();
    assert_eq!(ids, ["req-1", "req-3"]);
    assert_eq!(batch.skipped, 1);
}

#[tokio::test]
async fn reads_in_batches_from_an_offset_and_clear_empties_the_file() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("j.jsonl");
    let mut journal = Journal::open(&path).await.unwrap();
    let records: Vec<StoredRecord> = (0..5)
        .map(|index| final_record(&format!("req-{index}"), index))
        .collect();
    journal.append(&records).await.unwrap();
    let first = journal.read_from(0, 2).await.unwrap();
    assert_eq!(first.records, records[..2]);
    let second = journal.read_from(first.next_offset, 10).await.unwrap();
    assert_eq!(second.records, records[2..]);
    let end = journal.read_from(second.next_offset, 10).await.unwrap();
    assert!(end.records.is_empty());
    assert_eq!(end.next_offset, second.next_offset);
    journal.committed(5);
    journal.clear().await.unwrap();
    assert_eq!((journal.records(), journal.bytes()), (0, 0));
    assert!(!path.exists());
    assert!(read_all(&journal).await.records.is_empty());
}
