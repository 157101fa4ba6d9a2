//! Metrics labels, in one place, so every counter of the same thing is
//! labelled the same way wherever it is counted.

use api::proto::Priority;

/// The priority a piece was fetched at, as a label, so bytes fetched on
/// behalf of blocked readers can be told from bulk work.
pub fn priority(level: u8) -> &'static str {
    match level {
        l if l >= Priority::Read as u8 => "read",
        l if l >= Priority::Prefetch as u8 => "prefetch",
        _ => "bulk",
    }
}

/// Where downloaded bytes came from (`dffs_download_bytes_total{source}`).
pub const FROM_ORIGIN: &str = "origin";
pub const FROM_PEER: &str = "peer";
pub const FROM_CACHE: &str = "local";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_has_its_own_label() {
        assert_eq!(priority(Priority::Bulk as u8), "bulk");
        assert_eq!(priority(Priority::Prefetch as u8), "prefetch");
        assert_eq!(priority(Priority::Read as u8), "read");
    }
}
