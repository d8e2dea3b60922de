//! Errors that already know their AMQP reply code.
//!
//! One type, [`AmqpError`], carries the [`ReplyCode`] (which decides whether the channel or the
//! whole connection closes, as `rabbit_binary_generator:map_exception/2` does), the full reply
//! text in RabbitMQ's `"NAME - explanation"` form, and the failing method's ids. Constructors
//! below reproduce RabbitMQ's texts so that client test suites matching on them pass.

use warren_codec::ReplyCode;

/// A protocol-level error to report to the client with `channel.close` or `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    /// The reply code; hard codes close the connection.
    pub code: ReplyCode,
    /// Reply text, `"NAME - explanation"`, at most 255 bytes.
    pub text: String,
    /// Class of the failing method (0 when none).
    pub class_id: u16,
    /// Id of the failing method (0 when none).
    pub method_id: u16,
}

/// Result alias for broker operations.
pub type AmqpResult<T> = Result<T, AmqpError>;

impl AmqpError {
    /// An error with `code` and `explanation` (the `"NAME - "` prefix is added).
    pub fn new(code: ReplyCode, explanation: impl AsRef<str>) -> Self {
        Self {
            code,
            text: code.text(explanation.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Names the failing method.
    pub fn on(mut self, ids: (u16, u16)) -> Self {
        if self.class_id == 0 {
            self.class_id = ids.0;
            self.method_id = ids.1;
        }
        self
    }

    /// Whether this error closes the connection rather than the channel.
    pub fn is_hard(&self) -> bool {
        self.code.is_hard()
    }

    /// 404 NOT_FOUND.
    pub fn not_found(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::NotFound, explanation)
    }
    /// 403 ACCESS_REFUSED.
    pub fn access_refused(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::AccessRefused, explanation)
    }
    /// 403 for declaring, deleting or binding the default exchange (passive too, as RabbitMQ).
    pub fn default_exchange_refused() -> Self {
        Self::access_refused("operation not permitted on the default exchange")
    }
    /// 405 RESOURCE_LOCKED.
    pub fn resource_locked(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::ResourceLocked, explanation)
    }
    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::PreconditionFailed, explanation)
    }
    /// 503 COMMAND_INVALID.
    pub fn command_invalid(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::CommandInvalid, explanation)
    }
    /// 504 CHANNEL_ERROR.
    pub fn channel_error(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::ChannelError, explanation)
    }
    /// 530 NOT_ALLOWED.
    pub fn not_allowed(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::NotAllowed, explanation)
    }
    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::NotImplemented, explanation)
    }
    /// 541 INTERNAL_ERROR.
    pub fn internal(explanation: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::InternalError, explanation)
    }

    /// 541 `INTERNAL_ERROR` with no explanation: what RabbitMQ answers when an exchange type
    /// plugin crashes on bad input (the consistent-hash plugin given a non-string
    /// `hash-header`, the delayed-message plugin given a non-numeric string `x-delay`).
    pub fn internal_crash() -> Self {
        Self {
            code: ReplyCode::InternalError,
            text: "INTERNAL_ERROR".into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// `no queue 'q' in vhost '/'`.
    pub fn no_queue(queue: &str, vhost: &str) -> Self {
        Self::not_found(format!("no queue '{queue}' in vhost '{vhost}'"))
    }
    /// `no exchange 'x' in vhost '/'`.
    pub fn no_exchange(exchange: &str, vhost: &str) -> Self {
        Self::not_found(format!("no exchange '{exchange}' in vhost '{vhost}'"))
    }
    /// The 405 text RabbitMQ sends for someone else's exclusive queue.
    pub fn queue_locked(queue: &str, vhost: &str) -> Self {
        Self::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. \
             It could be originally declared on another connection or the exclusive property \
             value does not match that of the original declaration."
        ))
    }
}

impl From<warren_codec::FrameError> for AmqpError {
    fn from(e: warren_codec::FrameError) -> Self {
        let (class_id, method_id) = e.method_ids();
        Self {
            code: e.reply_code(),
            text: e.reply_text(),
            class_id,
            method_id,
        }
    }
}
