//! The authentication exchange of docs/PROTOCOL.md, for both ends of one connection.
//!
//! Only bytes move here; proofs come from [`crate::auth`] and lines from [`crate::lines`].
//! Callers bound the whole exchange with `HANDSHAKE_TIMEOUT`.

use smol::io::{AsyncRead, AsyncWrite};

use crate::auth::{self, Key, Secret, Transcript};
use crate::error::{Error, ProtoError, Result};
use crate::lines::{send, LineReader};
use crate::signal::{Kind, Signal, MAC_LEN, NONCE_LEN, SID_LEN};

/// What the server learned from a client that proved the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Control or pool.
    pub kind: Kind,
    /// The session a pool connection joins.
    pub sid: Option<[u8; SID_LEN]>,
}

/// Server side: read `hello`, send `challenge`, read and check `auth`, then prove the key with
/// `proof`. On a wrong proof the client is told `err 202` and the error is returned for the log.
/// Only the tunnel's kinds (`ctl`, `pool`) are accepted; a relay kind is told `err 401`, and
/// so is every kind without a `key`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    lines: &mut LineReader,
    key: Option<&Key>,
    tls: u8,
    fp: Option<[u8; MAC_LEN]>,
) -> Result<Hello> {
    let pick = |kind| key.filter(|_| matches!(kind, Kind::Ctl | Kind::Pool));
    accept_keyed(s, lines, &pick, tls, fp).await
}

/// [`accept`] with the key chosen by the connection's kind (the relay proves the device key
/// to devices and the visit key to visitors). `pick` returning `None` refuses the kind with
/// `err 401` before anything else is sent.
///
/// The client proves first. The tunnel port faces everyone, so nothing the server sends before
/// a valid `auth` depends on the key: an outsider gets a nonce and `err 202`, never a proof to
/// guess the key against offline.
pub async fn accept_keyed<'k, S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    lines: &mut LineReader,
    pick: &(dyn Fn(Kind) -> Option<&'k Key> + Sync),
    tls: u8,
    fp: Option<[u8; MAC_LEN]>,
) -> Result<Hello> {
    let hello = match lines.next(s).await {
        Ok(Signal::Hello { kind, cnonce }) => Ok((kind, cnonce)),
        Ok(_) => Err(ProtoError::Unexpected("expected hello").into()),
        Err(e) => Err(e),
    };
    let (kind, cnonce) = match hello {
        Ok(h) => h,
        // A client that speaks TLS first (tls=1 or 2 in its URL) to a port without TLS.
        Err(Error::Signal(_)) if lines.leftover().first() == Some(&TLS_HANDSHAKE_RECORD) => {
            return Err(
                ProtoError::Unexpected("a TLS ClientHello, but this port runs tls=0").into(),
            )
        }
        Err(e) => return Err(e),
    };
    let Some(key) = pick(kind) else {
        refuse(s, 401, "connection kind not served here").await;
        return Err(ProtoError::Unexpected("connection kind not served here").into());
    };
    let snonce = auth::random::<NONCE_LEN>();
    let salt = key.salt();
    let t = Transcript {
        kind: auth::kind_token(kind),
        cnonce,
        snonce,
        salt,
        tls,
        fp,
    };
    send(
        s,
        &Signal::Challenge {
            snonce,
            salt,
            tls,
            fp,
        },
    )
    .await?;
    let (proof, sid) = match lines.next(s).await? {
        Signal::Auth { proof, sid } => (proof, sid),
        _ => return Err(ProtoError::Unexpected("expected auth").into()),
    };
    // Only a pool connection names a session.
    let sid_ok = (kind == Kind::Pool) == sid.is_some();
    if !sid_ok || !t.verify_client(key, sid, &proof) {
        refuse(s, 202, "permission denied").await;
        return Err(ProtoError::BadProof.into());
    }
    send(
        s,
        &Signal::Proof {
            proof: t.server_proof(key),
        },
    )
    .await?;
    Ok(Hello { kind, sid })
}

/// The first byte of a TLS handshake record: a ClientHello starts with it, a `hello` line
/// never does.
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why a client gave up when the answer to its `hello` is no line of ours.
const FOREIGN: &str = "the server's answer is not an edgepass challenge (another program, or \
                       an edgepass of another protocol version: update both ends)";

/// Send `err <code> <text>`, ignoring failures: the connection is being closed anyway.
pub async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, code: u16, text: &str) {
    let _ = send(s, &Signal::Err { code, text }).await;
}

/// Client side: send `hello`, check the server's `challenge` (TLS mode and certificate
/// fingerprint against the transport we are on), send `auth` with the key stretched with the
/// challenge's salt, then check the server's `proof`.
/// `tls` is the mode of the transport and `seen_fp` the SHA-256 of the certificate the TLS
/// handshake showed us. A challenge that does not match the transport is refused before we
/// prove anything, so a man in the middle with its own certificate gets no proof at all.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    lines: &mut LineReader,
    secret: &Secret,
    kind: Kind,
    sid: Option<[u8; SID_LEN]>,
    tls: u8,
    seen_fp: Option<[u8; MAC_LEN]>,
) -> Result<()> {
    let cnonce = auth::random::<NONCE_LEN>();
    send(s, &Signal::Hello { kind, cnonce }).await?;
    let answer = match lines.next(s).await {
        // The first line back does not parse: not an edgepass server, or one of a version
        // that words its challenge otherwise. Say so rather than name a token.
        Err(Error::Signal(_)) => return Err(ProtoError::Unexpected(FOREIGN).into()),
        other => other?,
    };
    let (snonce, salt, their_tls, fp) = match answer {
        Signal::Challenge {
            snonce,
            salt,
            tls,
            fp,
        } => (snonce, salt, tls, fp),
        Signal::UseTls { mode } => return Err(ProtoError::NeedTls(mode).into()),
        Signal::Err { code, .. } => return Err(ProtoError::Refused(code).into()),
        _ => return Err(ProtoError::Unexpected("expected challenge").into()),
    };
    if their_tls != tls {
        return Err(ProtoError::TlsMismatch.into());
    }
    if tls != 0 && (fp.is_none() || fp != seen_fp) {
        return Err(ProtoError::FingerprintMismatch.into());
    }
    let key = &secret.key(salt);
    let t = Transcript {
        kind: auth::kind_token(kind),
        cnonce,
        snonce,
        salt,
        tls: their_tls,
        fp,
    };
    send(
        s,
        &Signal::Auth {
            proof: t.client_proof(key, sid),
            sid,
        },
    )
    .await?;
    match lines.next(s).await? {
        Signal::Proof { proof } if t.verify_server(key, &proof) => Ok(()),
        Signal::Proof { .. } => Err(ProtoError::ServerProof.into()),
        Signal::Err { code, .. } => Err(ProtoError::Refused(code).into()),
        _ => Err(ProtoError::Unexpected("expected proof").into()),
    }
}
