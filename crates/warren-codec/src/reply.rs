//! AMQP reply codes, named as RabbitMQ names them in reply texts (`NOT_FOUND`, not `not-found`).

/// An AMQP 0-9-1 reply code. Soft codes close a channel, hard codes the connection
/// (`rabbit_binary_generator:map_exception/2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 200
    Success,
    /// 311 (soft)
    ContentTooLarge,
    /// 312 (soft)
    NoRoute,
    /// 313 (soft)
    NoConsumers,
    /// 320 (hard)
    ConnectionForced,
    /// 402 (hard)
    InvalidPath,
    /// 403 (soft)
    AccessRefused,
    /// 404 (soft)
    NotFound,
    /// 405 (soft)
    ResourceLocked,
    /// 406 (soft)
    PreconditionFailed,
    /// 501 (hard)
    FrameError,
    /// 502 (hard)
    SyntaxError,
    /// 503 (hard)
    CommandInvalid,
    /// 504 (hard)
    ChannelError,
    /// 505 (hard)
    UnexpectedFrame,
    /// 506 (hard)
    ResourceError,
    /// 530 (hard)
    NotAllowed,
    /// 540 (hard)
    NotImplemented,
    /// 541 (hard)
    InternalError,
}

macro_rules! reply_codes {
    ($($variant:ident = $code:literal, $name:literal, $hard:literal;)*) => {
        impl ReplyCode {
            /// The numeric code sent on the wire.
            pub fn code(self) -> u16 {
                match self { $(ReplyCode::$variant => $code,)* }
            }
            /// RabbitMQ's name for the code, as it starts reply texts (`"NOT_FOUND"`).
            pub fn name(self) -> &'static str {
                match self { $(ReplyCode::$variant => $name,)* }
            }
            /// Whether the code closes the whole connection.
            pub fn is_hard(self) -> bool {
                match self { $(ReplyCode::$variant => $hard,)* }
            }
            /// The code for a numeric value, if it is one AMQP defines.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $($code => Some(ReplyCode::$variant),)* _ => None }
            }
        }
    };
}

reply_codes! {
    Success = 200, "OK", false;
    ContentTooLarge = 311, "CONTENT_TOO_LARGE", false;
    NoRoute = 312, "NO_ROUTE", false;
    NoConsumers = 313, "NO_CONSUMERS", false;
    ConnectionForced = 320, "CONNECTION_FORCED", true;
    InvalidPath = 402, "INVALID_PATH", true;
    AccessRefused = 403, "ACCESS_REFUSED", false;
    NotFound = 404, "NOT_FOUND", false;
    ResourceLocked = 405, "RESOURCE_LOCKED", false;
    PreconditionFailed = 406, "PRECONDITION_FAILED", false;
    FrameError = 501, "FRAME_ERROR", true;
    SyntaxError = 502, "SYNTAX_ERROR", true;
    CommandInvalid = 503, "COMMAND_INVALID", true;
    ChannelError = 504, "CHANNEL_ERROR", true;
    UnexpectedFrame = 505, "UNEXPECTED_FRAME", true;
    ResourceError = 506, "RESOURCE_ERROR", true;
    NotAllowed = 530, "NOT_ALLOWED", true;
    NotImplemented = 540, "NOT_IMPLEMENTED", true;
    InternalError = 541, "INTERNAL_ERROR", true;
}

impl ReplyCode {
    /// Formats a reply text the way RabbitMQ does: `"NAME - explanation"`; a text over 255
    /// bytes (the limit of a short string) is cut to 252 bytes on a character boundary and ends
    /// in `...`, as `rabbit_binary_generator:amqp_exception_explanation` does.
    pub fn text(self, explanation: &str) -> String {
        let mut s = format!("{} - {}", self.name(), explanation);
        if s.len() > 255 {
            truncate_to(&mut s, 252);
            s.push_str("...");
        }
        s
    }
}

/// Cuts `s` to at most `max` bytes without splitting a UTF-8 character.
pub(crate) fn truncate_to(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_classes() {
        for code in [
            200u16, 311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530,
            540, 541,
        ] {
            let rc = ReplyCode::from_code(code).expect("known code");
            assert_eq!(rc.code(), code);
            assert_eq!(rc.is_hard(), code == 320 || code == 402 || code >= 500);
        }
        assert_eq!(ReplyCode::from_code(999), None);
    }

    #[test]
    fn text_is_rabbitmq_style_and_bounded() {
        assert_eq!(
            ReplyCode::NotFound.text("no queue 'q' in vhost '/'"),
            "NOT_FOUND - no queue 'q' in vhost '/'"
        );
        let long = "é".repeat(300);
        let t = ReplyCode::PreconditionFailed.text(&long);
        assert!(t.len() <= 255);
        assert!(t.starts_with("PRECONDITION_FAILED - "));
        assert!(t.ends_with("..."));
        // Checked against RabbitMQ 3.10.8: a passive declare of a 250-byte queue name gets a
        // 255-byte text, the first 252 bytes of the full text and `...`.
        let t = ReplyCode::NotFound.text(&format!("no queue '{}' in vhost '/'", "q".repeat(250)));
        assert_eq!(t.len(), 255);
        assert!(t.ends_with(&format!("{}...", "q".repeat(17))));
        let exact = "x".repeat(255 - "NOT_FOUND - ".len());
        assert_eq!(ReplyCode::NotFound.text(&exact).len(), 255);
        assert!(!ReplyCode::NotFound.text(&exact).ends_with("..."));
    }
}
