//! Long-term credential authentication of requests (RFC 8489 section
//! 9.2.4) and the 401/438 challenges that hand out realm and nonce.

use stun_types::{
    attribute::{
        AttributeStaticType, MessageIntegrity, MessageIntegritySha256, Nonce, PasswordAlgorithm,
        PasswordAlgorithmValue, PasswordAlgorithms, Realm, Username,
    },
    message::{IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageWriteExt},
};

use super::{
    FiveTuple, Now,
    auth::{NonceStatus, UnknownUser},
    counters::RefusalCause,
    refusal::Refusal,
    reply::{Reply, Signer},
    server::Server,
};

/// The password algorithms offered in PASSWORD-ALGORITHMS, strongest first.
const SUPPORTED_PASSWORD_ALGORITHMS: [PasswordAlgorithmValue; 2] =
    [PasswordAlgorithmValue::SHA256, PasswordAlgorithmValue::MD5];

impl Server {
    /// Checks a request's credentials: the signer to answer with and the
    /// username, or the response to send instead (a challenge or a 400;
    /// `None` when nothing can be built).
    pub(super) fn authenticate(
        &mut self,
        from: FiveTuple,
        request: &Message,
        now: Now,
    ) -> Result<(Signer, String), Option<Vec<u8>>> {
        let reply = Reply::new(request, None, None);
        let has_integrity = request.has_attribute(MessageIntegrity::TYPE)
            || request.has_attribute(MessageIntegritySha256::TYPE);
        if !has_integrity {
            return Err(self.challenge(from, request, Refusal::Unauthorized, now));
        }
        let (Ok(username), Ok(_realm), Ok(nonce)) = (
            request.attribute::<Username>(),
            request.attribute::<Realm>(),
            request.attribute::<Nonce>(),
        ) else {
            return Err(reply.refuse(Refusal::BadRequest).ok());
        };
        let cookie = match self.auth.check_nonce(nonce.nonce(), &from, now.unix_secs) {
            NonceStatus::Valid { cookie } => cookie,
            NonceStatus::Stale => {
                self.counters.refuse(RefusalCause::StaleNonce);
                return Err(self.challenge(from, request, Refusal::StaleNonce, now));
            }
        };
        if cookie && !password_algorithms_match(request) {
            return Err(reply.refuse(Refusal::BadRequest).ok());
        }
        let passwords = match self.auth.passwords(username.username(), now.unix_secs) {
            Ok(passwords) => passwords,
            Err(UnknownUser::NoSuchUser | UnknownUser::Expired) => {
                self.counters.refuse(RefusalCause::Auth);
                return Err(self.challenge(from, request, Refusal::Unauthorized, now));
            }
        };
        let algorithm = if request.has_attribute(MessageIntegritySha256::TYPE) {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        for password in passwords {
            let credentials = LongTermKeyCredentials::new(
                username.username().to_owned(),
                password,
                self.auth.realm().to_owned(),
            );
            let key = credentials.make_key(algorithm);
            if request.validate_integrity_with_key(&key).is_ok() {
                return Ok((Signer { key, algorithm }, username.username().to_owned()));
            }
        }
        self.counters.refuse(RefusalCause::Auth);
        Err(self.challenge(from, request, Refusal::Unauthorized, now))
    }

    /// 401 or 438 with REALM and a fresh NONCE. On UDP the response must
    /// fit the amplification ratio: first choice is the full form (nonce
    /// with the security-feature cookie, PASSWORD-ALGORITHMS, FINGERPRINT as
    /// the request had it), second the compact one (plain nonce, no
    /// FINGERPRINT); the caller drops what still does not fit.
    fn challenge(
        &self,
        from: FiveTuple,
        request: &Message,
        refusal: Refusal,
        now: Now,
    ) -> Option<Vec<u8>> {
        let realm = Realm::new(self.auth.realm()).ok()?;
        let code = refusal.code();
        let build = |reply: Reply, cookie: bool| {
            let nonce = Nonce::new(&self.auth.nonce(&from, now.unix_secs, cookie))?;
            reply.error(code, |b| {
                b.add_attribute(&realm)?;
                b.add_attribute(&nonce)?;
                if cookie {
                    b.add_attribute(&PasswordAlgorithms::new(&SUPPORTED_PASSWORD_ALGORITHMS))?;
                }
                Ok(())
            })
        };
        let full = build(Reply::new(request, None, None), true).ok()?;
        if from.transport.is_stream()
            || full.len()
                <= self
                    .ledger
                    .books()
                    .budget
                    .max_response(request.as_bytes().len())
        {
            Some(full)
        } else {
            build(Reply::compact(request), false).ok()
        }
    }
}

/// With the security-feature cookie, the request must echo our
/// PASSWORD-ALGORITHMS and pick one of them (RFC 8489 section 9.2.4).
fn password_algorithms_match(request: &Message) -> bool {
    let (Ok(list), Ok(chosen)) = (
        request.attribute::<PasswordAlgorithms>(),
        request.attribute::<PasswordAlgorithm>(),
    ) else {
        // A client unaware of the feature sends neither: plain RFC 5389.
        return !request.has_attribute(PasswordAlgorithms::TYPE)
            && !request.has_attribute(PasswordAlgorithm::TYPE);
    };
    list.algorithms() == SUPPORTED_PASSWORD_ALGORITHMS
        && SUPPORTED_PASSWORD_ALGORITHMS.contains(&chosen.algorithm())
}
