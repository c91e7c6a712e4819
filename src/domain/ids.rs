//! Typed, prefixed identifiers (`evt_…`, `wh_…`, `dlv_…`).
//!
//! An id is a type prefix plus a UUIDv7 in lowercase hex. UUIDv7 starts with a
//! millisecond timestamp, so ids sort by creation time: the stores use them as
//! the key for cursor pagination without a second index. Parsing checks the
//! prefix and the shape, so an id of one kind can never be used as another, and
//! garbage in a path answers 404 without reaching the database.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The last (milliseconds << 12 | counter) handed out, so that ids made in
/// this process sort in the order they were made, even within a millisecond.
static LAST_STAMP: AtomicU64 = AtomicU64::new(0);

/// A fresh UUIDv7 for identifiers outside the database (request ids).
pub fn new_uuid() -> Uuid {
    uuid_v7(crate::domain::time::now_ms().max(0) as u64)
}

/// A UUIDv7 (RFC 9562): 48 bits of unix milliseconds, a 12-bit counter for
/// order within a millisecond (the RFC's "fixed-length dedicated counter"),
/// and 62 random bits from the thread's CSPRNG, which unlike the `uuid`
/// crate's default costs no system call per id.
fn uuid_v7(unix_ms: u64) -> Uuid {
    let wanted = unix_ms << 12;
    let mut last = LAST_STAMP.load(Ordering::Relaxed);
    let stamp = loop {
        if wanted < last & !0xfff {
            // A time before the latest id: no order to keep with it.
            break wanted | (rand::random::<u64>() & 0xfff);
        }
        let next = wanted.max(last + 1);
        match LAST_STAMP.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    let (ms, counter) = (stamp >> 12, stamp & 0xfff);
    let random: u64 = rand::random();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70 | (counter >> 8) as u8; // version 7
    bytes[7] = counter as u8;
    bytes[8..].copy_from_slice(&random.to_be_bytes());
    bytes[8] = 0x80 | (bytes[8] & 0x3f); // RFC 9562 variant
    Uuid::from_bytes(bytes)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The type prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self::generate_at(crate::domain::time::now_ms())
            }

            /// A fresh id whose time part is `unix_ms`, for objects whose
            /// creation time is stored beside the id: the two then agree.
            pub fn generate_at(unix_ms: i64) -> Self {
                // Written out by hand: `format!` cost the SQLite writer, which
                // makes the delivery ids, about 4 % of its instructions.
                let mut id = String::with_capacity($prefix.len() + 32);
                id.push_str($prefix);
                id.push_str(uuid_v7(unix_ms.max(0) as u64).simple().encode_lower(&mut Uuid::encode_buffer()));
                Self(id)
            }

            /// Accepts only a well-formed id of this kind.
            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                let well_formed = rest.len() == 32
                    && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                well_formed.then(|| Self(s.to_owned()))
            }

            /// The smallest id that can be generated at or after `unix_ms`: every
            /// id made earlier sorts below it.
            pub fn first_at(unix_ms: i64) -> Self {
                Self(format!("{}{:012x}{:020x}", $prefix, unix_ms.max(0), 0))
            }

            /// Wraps a value read back from the database, which only ever holds ids
            /// this type generated.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A tenant: owns keys, secrets, webhooks, events and logs.
    ProjectId,
    "prj_"
);
id_type!(
    /// One API key of a project (not the key itself, which is never stored).
    ApiKeyId,
    "key_"
);
id_type!(
    /// A webhook endpoint configured by a project.
    WebhookId,
    "wh_"
);
id_type!(
    /// An accepted event.
    EventId,
    "evt_"
);
id_type!(
    /// One event going to one webhook; also the `webhook-id` header, stable across retries.
    DeliveryId,
    "dlv_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = EventId::generate();
        assert_eq!(EventId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn an_id_of_another_kind_does_not_parse() {
        let id = WebhookId::generate();
        assert_eq!(EventId::parse(id.as_str()), None);
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        for s in ["", "evt_", "evt_xyz", "evt_0123", "EVT_0193a5e0c6f27b5d8e6f1a2b3c4d5e6f"] {
            assert_eq!(EventId::parse(s), None, "{s}");
        }
        assert!(EventId::parse("evt_0193a5e0c6f27b5d8e6f1a2b3c4d5e6f").is_some());
        assert!(EventId::parse("evt_0193A5E0C6F27B5D8E6F1A2B3C4D5E6F").is_none());
    }

    #[test]
    fn first_at_bounds_the_ids_of_an_instant() {
        let before = EventId::generate();
        let now = crate::domain::time::now_ms();
        let bound = EventId::first_at(now + 1);
        assert!(before < bound);
        assert!(EventId::first_at(now + 2) > bound);
        assert!(EventId::parse(bound.as_str()).is_some());
    }

    #[test]
    fn ids_are_uuid_v7_with_their_time_inside() {
        let id = EventId::generate_at(1_700_000_000_123);
        let uuid = Uuid::parse_str(&id.as_str()[4..]).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, 1_700_000_000_123);
    }

    #[test]
    fn many_ids_in_one_millisecond_keep_their_order() {
        let ids: Vec<DeliveryId> = (0..5000).map(|_| DeliveryId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = DeliveryId::generate();
        let b = DeliveryId::generate();
        assert!(a < b);
    }
}
