//! NATS JWT decoding: arbitrary tokens never panic; a token signed from arbitrary
//! claims decodes to exactly those claims; a token with any one byte changed either
//! fails or decodes to the very same claims (a signature binds what it covers), and a
//! user JWT from arbitrary claims never passes the chain of trust under another
//! operator.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::auth::jwt::{self, Claims, NatsClaims, PermissionSpec};

#[derive(Arbitrary, Debug)]
enum Input {
    Token(String),
    Signed {
        name: String,
        kind: u8,
        exp: Option<i64>,
        nbf: Option<i64>,
        allow: Vec<String>,
        deny: Vec<String>,
        flip_at: u16,
        flip_to: u8,
        now: i64,
    },
}

struct Keys {
    operator: nkeys::KeyPair,
    account: nkeys::KeyPair,
    user: nkeys::KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        operator: nkeys::KeyPair::new_operator(),
        account: nkeys::KeyPair::new_account(),
        user: nkeys::KeyPair::new_user(),
    })
}

fuzz_target!(|input: Input| {
    match input {
        Input::Token(token) => {
            let _ = jwt::decode(&token);
        }
        Input::Signed {
            name,
            kind,
            exp,
            nbf,
            allow,
            deny,
            flip_at,
            flip_to,
            now,
        } => {
            let k = keys();
            let claims = Claims {
                iss: k.account.public_key(),
                sub: k.user.public_key(),
                name,
                exp,
                nbf,
                nats: NatsClaims {
                    kind: ["user", "account", "operator", ""][usize::from(kind % 4)].into(),
                    version: 2,
                    publish: Some(PermissionSpec { allow, deny }),
                    ..NatsClaims::default()
                },
                ..Claims::default()
            };
            let token = jwt::encode(&claims, &k.account).expect("encode");
            let back = jwt::decode(&token).expect("our own token decodes");
            assert_eq!(back, claims);
            let mut bytes = token.clone().into_bytes();
            let at = usize::from(flip_at) % bytes.len();
            bytes[at] = flip_to;
            if let Ok(mutated) = String::from_utf8(bytes) {
                if let Ok(decoded) = jwt::decode(&mutated) {
                    assert_eq!(decoded, claims, "a changed token decoded to other claims");
                }
            }
            // Under an operator that did not issue the account, never trusted.
            let account = jwt::encode(
                &Claims {
                    iss: k.operator.public_key(),
                    sub: k.account.public_key(),
                    nats: NatsClaims {
                        kind: "account".into(),
                        version: 2,
                        ..NatsClaims::default()
                    },
                    ..Claims::default()
                },
                &k.operator,
            )
            .expect("encode account");
            let stranger = "OCAT33MTVU2VUOIMGNGUNXJ66AH2RLSDAF3MUBCYAY5QMIL65NQM6XQG".to_string();
            assert!(jwt::verify_user(&token, &account, &[stranger], now).is_err());
        }
    }
});
