//! Why a request is refused: the error responses this server sends, each
//! with its STUN error code (RFC 8489 section 14.8, RFC 8656 section 19).

use stun_types::attribute::AttributeType;

/// A refusal, answered as an error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed, or attributes that do not go together.
    BadRequest,
    /// 401: no or wrong credentials; answered with a challenge.
    Unauthorized,
    /// 403: the peer policy refuses the peer.
    Forbidden,
    /// 420: comprehension-required attributes this server does not know.
    UnknownAttributes(Vec<AttributeType>),
    /// 437: no allocation for this 5-tuple, or a second Allocate on it.
    AllocationMismatch,
    /// 438: the nonce expired or belongs to another 5-tuple; answered with
    /// a challenge.
    StaleNonce,
    /// 440: no relay address of the requested family.
    AddressFamilyNotSupported,
    /// 441: the 5-tuple's allocation belongs to another user.
    WrongCredentials,
    /// 442: a relayed transport other than UDP.
    UnsupportedTransportProtocol,
    /// 443: the peer's family is not one of the allocation's.
    PeerAddressFamilyMismatch,
    /// 486: the user's allocation quota is reached.
    AllocationQuotaReached,
    /// 508: no port, the total quota, or a reservation token that is not
    /// valid.
    InsufficientCapacity,
}

impl Refusal {
    /// The STUN error code.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::Unauthorized => 401,
            Refusal::Forbidden => 403,
            Refusal::UnknownAttributes(_) => 420,
            Refusal::AllocationMismatch => 437,
            Refusal::StaleNonce => 438,
            Refusal::AddressFamilyNotSupported => 440,
            Refusal::WrongCredentials => 441,
            Refusal::UnsupportedTransportProtocol => 442,
            Refusal::PeerAddressFamilyMismatch => 443,
            Refusal::AllocationQuotaReached => 486,
            Refusal::InsufficientCapacity => 508,
        }
    }
}

impl From<super::AllocateError> for Refusal {
    fn from(error: super::AllocateError) -> Self {
        match error {
            super::AllocateError::FamilyNotSupported => Refusal::AddressFamilyNotSupported,
            super::AllocateError::InsufficientCapacity => Refusal::InsufficientCapacity,
        }
    }
}
