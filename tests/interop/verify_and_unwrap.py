"""Interop check with standard Python libraries: PyJWT verifies a coffer token through the
server's JWKS; jwcrypto verifies the signed release response with the broker key (whose RFC 7638
thumbprint must be the one the server publishes) and decrypts the released key inside it. Prints
the released JWK as JSON.

usage: verify_and_unwrap.py SERVER_URL ISSUER TOKEN_FILE RESPONSE_FILE PRIVATE_JWK_FILE
"""
import json
import sys
import urllib.request

import jwt
from jwcrypto import jwe, jwk, jws

server, issuer, token_file, response_file, key_file = sys.argv[1:6]
token = open(token_file).read().strip()

jwks = json.load(urllib.request.urlopen(server.rstrip("/") + "/certs"))
kid = jwt.get_unverified_header(token)["kid"]
key = next(k for k in jwks["keys"] if k["kid"] == kid)
claims = jwt.decode(
    token,
    key=jwt.PyJWK(key).key,
    algorithms=["RS256"],
    issuer=issuer,
    options={"require": ["exp", "iat", "nbf", "iss"]},
)
assert claims["x-ms-attestation-type"] == "sevsnpvm", claims

broker = json.load(urllib.request.urlopen(server.rstrip("/") + "/broker-key"))
broker_key = jwk.JWK(**broker["jwk"])
assert broker_key.thumbprint() == broker["thumbprint"], (broker_key.thumbprint(), broker)
signed = jws.JWS()
signed.deserialize(open(response_file).read().strip())
signed.verify(broker_key, alg="ES256")
assert signed.jose_header["typ"] == "coffer-release+jws", signed.jose_header
payload = json.loads(signed.payload)

private = jwk.JWK.from_json(open(key_file).read())
assert payload["wrapping_key"] == private.thumbprint(), payload
token_jwe = jwe.JWE()
token_jwe.deserialize(payload["value"], key=private)
header = token_jwe.jose_header
assert header["alg"] == "RSA-OAEP-256" and header["enc"] == "A256GCM", header
print(json.dumps({"claims_hostdata": claims["x-ms-sevsnpvm-hostdata"], "key": json.loads(token_jwe.payload)}))
