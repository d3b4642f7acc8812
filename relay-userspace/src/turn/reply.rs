//! Building responses to one request: success or error, signed with the
//! request's credentials when it was authenticated, fingerprinted when the
//! request was.

use stun_types::{
    attribute::{ErrorCode, Fingerprint, Software, UnknownAttributes},
    message::{
        IntegrityAlgorithm, IntegrityKey, Message, MessageWrite, MessageWriteExt, MessageWriteVec,
        StunWriteError,
    },
};

/// The key and algorithm an authenticated request used; responses are
/// signed the same way (RFC 8489 section 9.2.4).
pub struct Signer {
    pub key: IntegrityKey,
    pub algorithm: IntegrityAlgorithm,
}

/// Builds responses to `request`.
pub struct Reply<'a> {
    request: &'a Message<'a>,
    signer: Option<&'a Signer>,
    software: Option<&'a str>,
    fingerprint: bool,
}

impl<'a> Reply<'a> {
    /// Responses to an unauthenticated request (no signer) are kept as small
    /// as the RFC allows: no SOFTWARE and no reason phrase.
    pub fn new(
        request: &'a Message<'a>,
        signer: Option<&'a Signer>,
        software: Option<&'a str>,
    ) -> Self {
        Reply {
            request,
            signer,
            software: signer.and(software),
            fingerprint: request.has_attribute(Fingerprint::TYPE),
        }
    }

    /// The smallest valid response: like an unauthenticated one, and without
    /// FINGERPRINT, which is optional (RFC 8489 section 14.7).
    pub fn compact(request: &'a Message<'a>) -> Self {
        Reply {
            fingerprint: false,
            ..Reply::new(request, None, None)
        }
    }

    /// A success response with the attributes `add` writes.
    pub fn success(
        &self,
        add: impl FnOnce(&mut MessageWriteVec) -> Result<(), StunWriteError>,
    ) -> Result<Vec<u8>, StunWriteError> {
        let mut builder = Message::builder_success(self.request, MessageWriteVec::new());
        add(&mut builder)?;
        self.finish(builder)
    }

    /// An error response with `code` and the attributes `add` writes.
    pub fn error(
        &self,
        code: u16,
        add: impl FnOnce(&mut MessageWriteVec) -> Result<(), StunWriteError>,
    ) -> Result<Vec<u8>, StunWriteError> {
        self.error_with_reason(code, ErrorCode::default_reason_for_code(code), add)
    }

    /// As [`Self::error`], with the reason phrase `reason` (dropped, like
    /// every reason, from unauthenticated responses).
    pub fn error_with_reason(
        &self,
        code: u16,
        reason: &str,
        add: impl FnOnce(&mut MessageWriteVec) -> Result<(), StunWriteError>,
    ) -> Result<Vec<u8>, StunWriteError> {
        let mut builder = Message::builder_error(self.request, MessageWriteVec::new());
        let reason = if self.signer.is_some() { reason } else { "" };
        builder.add_attribute(&ErrorCode::new(code, reason)?)?;
        add(&mut builder)?;
        self.finish(builder)
    }

    /// The error response for `refusal`, with UNKNOWN-ATTRIBUTES for 420.
    pub fn refuse(&self, refusal: Refusal) -> Result<Vec<u8>, StunWriteError> {
        let code = refusal.code();
        match refusal {
            Refusal::UnknownAttributes(unknown) => {
                self.error(code, |b| b.add_attribute(&UnknownAttributes::new(&unknown)))
            }
            _ => self.error(code, |_| Ok(())),
        }
    }

    fn finish(&self, mut builder: MessageWriteVec) -> Result<Vec<u8>, StunWriteError> {
        if let Some(software) = self.software {
            builder.add_attribute(&Software::new(software)?)?;
        }
        if let Some(signer) = self.signer {
            builder.add_message_integrity_with_key(&signer.key, signer.algorithm)?;
        }
        if self.fingerprint {
            builder.add_fingerprint()?;
        }
        Ok(builder.finish())
    }
}

use stun_types::attribute::AttributeStaticType;

use super::refusal::Refusal;
