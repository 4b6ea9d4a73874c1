//! The wall-clock format of every time field the driver writes: heartbeats, condition
//! transitions, prepare times. One helper, so that every field compares and sorts alike.

use jiff::Timestamp;

/// The current time in RFC 3339 form, whole seconds, UTC (`2026-01-01T00:00:00Z`).
pub fn now_rfc3339() -> String {
    rfc3339(Timestamp::now())
}

/// `t` in RFC 3339 form, whole seconds, UTC: the form Kubernetes stores times in, so that a
/// time read back compares equal to the one written.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_in_utc() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-01-01T00:00:00Z".len(), "{now}");
        assert!(now.ends_with('Z'), "{now}");
        assert!(now.parse::<Timestamp>().is_ok(), "{now}");
        let t: Timestamp = "2026-01-01T00:00:01.75Z".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-01-01T00:00:01Z");
    }
}
