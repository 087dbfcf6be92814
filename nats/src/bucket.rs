//! The key-value bucket, as a stream made by hand and written with plain publishes.
//!
//! async-nats 0.52 cannot create a bucket on a 2.9 server (its account-info answer lacks fields
//! the client requires, ADR 17), so the bucket is the stream `KV_<bucket>` on `$KV.<bucket>.>`
//! with one message kept per subject, which is the layout of the NATS key-value convention. A
//! key's revision is the stream sequence of its last write. Creating is a publish expecting the
//! key's subject empty (atomic on 2.9.10); updating expects the revision read (not atomic under
//! concurrent writers before 2.9.21, nats-server issue #4320: use it only where one writer
//! writes a key, as the lease protocol does). Every write carries a message id of its own, so a
//! retry after a lost acknowledgement is answered as a duplicate, never refused as a conflict
//! with itself. Reads go to the stream's leader (`STREAM.MSG.GET` and `STREAM.INFO`, which only
//! the leader answers), never a replica's direct get, which may answer from before the last
//! write.

use std::time::Duration;

use futures_util::TryStreamExt;

use crate::errors::{KvError, LinkError, PublishError};
use crate::jetstream::{ensure_stream, failed, last_on_subject, publish, purge, with_retries};
use crate::limits::{BUCKET_DUPLICATE_WINDOW_MS, KV_ENTRIES_MAX};
use crate::model::{Ensured, Entry, Publish, StreamSpec};
use crate::names::{
    bucket_stream, bucket_subjects, check_key, check_name, is_tombstone, key_subject, prefix_filter, subject_key,
};
use crate::thread::Session;

/// Creates the bucket's stream (or brings an existing one to this layout).
pub(crate) async fn ensure_bucket(session: &Session, bucket: &str, replicas: usize) -> Result<Ensured, LinkError> {
    check_name("bucket name", bucket)?;
    let spec = StreamSpec {
        duplicate_window: Duration::from_millis(BUCKET_DUPLICATE_WINDOW_MS),
        max_msgs_per_subject: Some(1),
        allow_direct: true,
        allow_rollup: true,
        ..StreamSpec::new(bucket_stream(bucket), vec![bucket_subjects(bucket)], replicas)
    };
    ensure_stream(session, &spec).await
}

/// Writes `value` under `key` if the key's last revision is `expected` (0: no entry).
async fn write(
    session: std::sync::Arc<Session>,
    bucket: &str,
    key: &str,
    value: Vec<u8>,
    expected: u64,
) -> Result<u64, PublishError> {
    let message = Publish {
        subject: key_subject(bucket, key),
        payload: value,
        msg_id: Some(session.next_id()),
        expected_last_subject_sequence: Some(expected),
        ..Publish::default()
    };
    publish(session, message).await.map(|ack| ack.sequence)
}

/// Creates `key`; refused with its revision when it exists.
pub(crate) async fn kv_create(
    session: std::sync::Arc<Session>,
    bucket: String,
    key: String,
    value: Vec<u8>,
) -> Result<u64, KvError> {
    check_name("bucket name", &bucket)?;
    check_key(&key)?;
    match write(session, &bucket, &key, value, 0).await {
        Err(PublishError::WrongLastSequence(revision)) => Err(KvError::Exists { revision }),
        other => Ok(other?),
    }
}

/// Replaces `key`'s value if its revision is `revision`; refused with the current one otherwise.
pub(crate) async fn kv_update(
    session: std::sync::Arc<Session>,
    bucket: String,
    key: String,
    value: Vec<u8>,
    revision: u64,
) -> Result<u64, KvError> {
    check_name("bucket name", &bucket)?;
    check_key(&key)?;
    match write(session, &bucket, &key, value, revision).await {
        Err(PublishError::WrongLastSequence(current)) => Err(KvError::WrongRevision { current }),
        other => Ok(other?),
    }
}

/// `key`'s latest entry, from the bucket stream's leader.
pub(crate) async fn kv_get(session: &Session, bucket: &str, key: &str) -> Result<Option<Entry>, LinkError> {
    check_name("bucket name", bucket)?;
    check_key(key)?;
    let found = last_on_subject(session, &bucket_stream(bucket), &key_subject(bucket, key)).await?;
    Ok(found
        .filter(|message| !is_tombstone(&message.headers))
        .map(|message| Entry { value: message.payload, revision: message.sequence }))
}

/// Every key that starts with `prefix` and its entry, sorted by key, all read from the leader:
/// the key list from `STREAM.INFO` with a subject filter, then each key's last message.
pub(crate) async fn kv_entries(
    session: &Session,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, Entry)>, LinkError> {
    check_name("bucket name", bucket)?;
    let stream = bucket_stream(bucket);
    let filter = prefix_filter(bucket, prefix);
    let what = format!("keys of {bucket} under {prefix:?}");
    let subjects = with_retries(session, &what, || async {
        let handle = session.jetstream.get_stream_no_info(&stream).await.map_err(|error| failed(&what, &error))?;
        let listing = handle.info_with_subjects(&filter).await.map_err(|error| failed(&what, &error))?;
        let subjects: Vec<(String, usize)> = listing.try_collect().await.map_err(|error| failed(&what, &error))?;
        Ok(subjects)
    })
    .await?;
    if subjects.len() > KV_ENTRIES_MAX {
        let detail = format!("{} keys, more than {KV_ENTRIES_MAX}", subjects.len());
        return Err(LinkError::Failed { what, detail });
    }
    let mut keys: Vec<String> = subjects
        .iter()
        .filter_map(|(subject, _)| subject_key(bucket, subject))
        .filter(|key| key.starts_with(prefix))
        .map(str::to_string)
        .collect();
    keys.sort();
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        // A key purged since the listing is simply left out.
        if let Some(entry) = kv_get(session, bucket, &key).await? {
            entries.push((key, entry));
        }
    }
    Ok(entries)
}

/// Removes `key` by purging its subject, so that it can be created again; whether it held one.
pub(crate) async fn kv_delete(session: &Session, bucket: &str, key: &str) -> Result<bool, LinkError> {
    check_name("bucket name", bucket)?;
    check_key(key)?;
    let purged = purge(session, &bucket_stream(bucket), Some(&key_subject(bucket, key)), None).await?;
    Ok(purged > 0)
}
