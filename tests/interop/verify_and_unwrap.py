"""Interop check with standard Python libraries: PyJWT verifies a coffer token through the
server's JWKS, jwcrypto decrypts a released key. Prints the released JWK as JSON.

usage: verify_and_unwrap.py SERVER_URL ISSUER TOKEN_FILE JWE_FILE PRIVATE_JWK_FILE
"""
import json
import sys
import urllib.request

import jwt
from jwcrypto import jwe, jwk

server, issuer, token_file, jwe_file, key_file = sys.argv[1:6]
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

private = jwk.JWK.from_json(open(key_file).read())
token_jwe = jwe.JWE()
token_jwe.deserialize(open(jwe_file).read().strip(), key=private)
header = token_jwe.jose_header
assert header["alg"] == "RSA-OAEP-256" and header["enc"] == "A256GCM", header
print(json.dumps({"claims_hostdata": claims["x-ms-sevsnpvm-hostdata"], "key": json.loads(token_jwe.payload)}))
