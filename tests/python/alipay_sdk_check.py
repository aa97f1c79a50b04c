"""Drives gateway-sim's Alipay with Alipay's official Python SDK `alipay-sdk-python`, as a
shop testing its own Alipay code against the simulator would. Run by
tests/all/alipay_sdk.rs, which starts the simulator, pays one trade, captures the
notification the simulator sent about it, and hands everything over in environment
variables:

  ALIPAY_GATEWAY_URL, ALIPAY_APP_ID, ALIPAY_APP_PRIVATE_KEY (PKCS#8 PEM),
  ALIPAY_PUBLIC_KEY (SPKI PEM)            (the simulator's client vars)
  SDK_PAID_ORDER      an order the buyer paid
  SDK_WAITING_ORDER   an order the buyer scanned and did not pay
  SDK_NOTIFICATION    a JSON file {"headers": {...}, "body": "..."}: the notification

`DefaultAlipayClient.execute` verifies every answer's RSA2 signature over the exact
`..._response` JSON text and raises `ResponseException` when it does not verify, so each
call below fails loudly if the simulator's signing is not Alipay-exact. The script also
shows that check is not vacuous (a tampered answer, and another Alipay public key, are
refused) and verifies the notification with the SDK's `verify_with_rsa` as Alipay's docs
say. Prints one line per check; exits non-zero on the first failure.
"""

import base64
import http.client
import json
import os
import sys
from urllib.parse import parse_qsl, urlparse

import rsa
from Crypto.PublicKey import RSA

import alipay.aop.api.DefaultAlipayClient as client_module
import alipay.aop.api.util.WebUtils as web_utils
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.domain.AlipayTradeCloseModel import AlipayTradeCloseModel
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.domain.AlipayTradeRefundModel import AlipayTradeRefundModel
from alipay.aop.api.exception.Exception import ResponseException
from alipay.aop.api.request.AlipayTradeCloseRequest import AlipayTradeCloseRequest
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.request.AlipayTradeRefundRequest import AlipayTradeRefundRequest
from alipay.aop.api.response.AlipayTradeCloseResponse import AlipayTradeCloseResponse
from alipay.aop.api.response.AlipayTradeQueryResponse import AlipayTradeQueryResponse
from alipay.aop.api.response.AlipayTradeRefundResponse import AlipayTradeRefundResponse
from alipay.aop.api.util.SignatureUtils import verify_with_rsa


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def pem_body(pem):
    """A key as Alipay's console and key tool hand it over: the base64 body alone (the SDK
    adds the markers itself)."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def pkcs1_private_key(pem):
    """The SDK reads the app's private key as PKCS#1 (`rsa.PrivateKey.load_pkcs1`), the
    format Alipay's key tool gives for non-Java languages; the simulator hands out PKCS#8,
    so convert it, as a shop with a PKCS#8 key would."""
    return pem_body(RSA.import_key(pem).export_key(format="PEM", pkcs=1).decode("ascii"))


def read_key(value):
    """A client var is the key itself or, with `gateway-sim --keys-dir`, its file."""
    if "-----BEGIN" in value:
        return value
    with open(value, encoding="ascii") as f:
        return f.read()


def get_http_connection(url, query_string, timeout):
    """The SDK's own `WebUtils.get_http_connection` with the port honoured. SDK bug
    (3.7.1411): it always connects to port 80 (443 for https) and then runs
    `url += url_parse_result.port`, a TypeError (str + int), so a `server_url` with a
    port, like the simulator's, cannot be reached at all. Alipay's own gateway has no
    port, so only a simulator or proxy meets this; everything else is the SDK's code."""
    parsed = urlparse(url)
    https = url.find("https") == 0
    port = parsed.port or (443 if https else 80)
    connection_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
    connection = connection_class(host=parsed.hostname, port=port, timeout=timeout)
    url = f"{parsed.scheme}://{parsed.hostname}"
    if parsed.port:
        url += f":{parsed.port}"
    url += parsed.path
    url += "?" + query_string
    return url, connection


web_utils.get_http_connection = get_http_connection

# Every raw answer the SDK received, recorded at its HTTP call (the client module's
# `do_post`), so that the answers can be checked and tampered with below.
RAW = []
_do_post = client_module.do_post


def recording_do_post(*args, **kwargs):
    raw = _do_post(*args, **kwargs)
    RAW.append(raw)
    return raw


client_module.do_post = recording_do_post


def make_client(env, alipay_public_key):
    config = AlipayClientConfig()
    config.server_url = env["ALIPAY_GATEWAY_URL"].rstrip("/") + "/gateway.do"
    config.app_id = env["ALIPAY_APP_ID"]
    config.app_private_key = pkcs1_private_key(read_key(env["ALIPAY_APP_PRIVATE_KEY"]))
    config.alipay_public_key = alipay_public_key
    config.sign_type = "RSA2"
    config.timeout = 10
    return DefaultAlipayClient(alipay_client_config=config)


def query_request(out_trade_no):
    model = AlipayTradeQueryModel()
    model.out_trade_no = out_trade_no
    return AlipayTradeQueryRequest(biz_model=model)


def signed_content(raw, member):
    """The bytes Alipay signs in an answer: the `member` object's exact text."""
    text = raw.decode("utf-8")
    start = text.index("{", text.index(f'"{member}"'))
    end = text.rindex(',"sign"')
    return text[start:end], json.loads(text)["sign"]


def sha256_signed(public_key, text, sign):
    """Whether `sign` is SHA256withRSA over `text`: the SDK's verify_with_rsa takes the
    hash named inside the signature, so it would accept an RSA (SHA-1) one as well."""
    key = rsa.PublicKey.load_pkcs1_openssl_pem(
        f"-----BEGIN PUBLIC KEY-----\n{public_key}\n-----END PUBLIC KEY-----"
    )
    return rsa.verify(text.encode("utf-8"), base64.b64decode(sign), key) == "SHA-256"


def main():
    env = os.environ
    alipay_public_key = pem_body(read_key(env["ALIPAY_PUBLIC_KEY"]))
    client = make_client(env, alipay_public_key)

    paid = env["SDK_PAID_ORDER"]
    content = client.execute(query_request(paid))
    check(len(RAW) == 1, f"alipay.trade.query {paid}: the SDK verified the answer's signature")
    query = AlipayTradeQueryResponse()
    query.parse_response_content(content)
    check(query.is_success() and query.code == "10000", f"the query succeeds ({content})")
    check(query.out_trade_no == paid, "the query answer names the paid order")
    check(query.trade_status == "TRADE_SUCCESS", "the paid trade reads TRADE_SUCCESS")
    check(query.total_amount == "9.90", f"its total_amount is 9.90 ({query.total_amount!r})")
    check(bool(query.trade_no), "it has Alipay's trade_no")

    # The SDK's verification is real: the raw answer verifies with the SDK's
    # verify_with_rsa over the exact response text, and the same text altered does not.
    raw = RAW[-1]
    text, sign = signed_content(raw, "alipay_trade_query_response")
    check(
        verify_with_rsa(alipay_public_key, text.encode("utf-8"), sign),
        "verify_with_rsa accepts the raw alipay_trade_query_response text",
    )
    check(
        sha256_signed(alipay_public_key, text, sign),
        "the answer is signed RSA2 (SHA256withRSA; verify_with_rsa would take SHA-1 too)",
    )
    forged = text.replace("TRADE_SUCCESS", "TRADE_CLOSED")
    check(forged != text, "the tampered text differs")
    try:
        verify_with_rsa(alipay_public_key, forged.encode("utf-8"), sign)
        refused = False
    except rsa.VerificationError:
        refused = True
    check(refused, "verify_with_rsa refuses the tampered answer")

    # ...and the client itself refuses a tampered answer.
    tampered = raw.replace(b"TRADE_SUCCESS", b"TRADE_CLOSED")
    client_module.do_post = lambda *a, **k: tampered
    try:
        client.execute(query_request(paid))
        refused = None
    except ResponseException as e:
        refused = str(e)
    finally:
        client_module.do_post = recording_do_post
    check(
        refused is not None and "response sign verify failed" in refused,
        "DefaultAlipayClient refuses a tampered answer (response sign verify failed)",
    )

    # ...and one checked against another Alipay public key.
    stranger = pem_body(RSA.generate(2048).publickey().export_key().decode("ascii"))
    try:
        make_client(env, stranger).execute(query_request(paid))
        refused = None
    except ResponseException as e:
        refused = str(e)
    check(
        refused is not None and "response sign verify failed" in refused,
        "DefaultAlipayClient refuses the simulator's answer under another public key",
    )

    waiting = env["SDK_WAITING_ORDER"]
    model = AlipayTradeCloseModel()
    model.out_trade_no = waiting
    content = client.execute(AlipayTradeCloseRequest(biz_model=model))
    close = AlipayTradeCloseResponse()
    close.parse_response_content(content)
    check(
        close.is_success() and close.code == "10000",
        f"alipay.trade.close {waiting}: signature verified, success ({content})",
    )
    check(close.out_trade_no == waiting, "the close answer names the waiting order")
    content = client.execute(query_request(waiting))
    closed = AlipayTradeQueryResponse()
    closed.parse_response_content(content)
    check(closed.trade_status == "TRADE_CLOSED", f"the closed trade reads TRADE_CLOSED ({content})")

    model = AlipayTradeRefundModel()
    model.out_trade_no = paid
    model.refund_amount = "0.01"
    model.out_request_no = f"SDK-RF-{paid}"
    content = client.execute(AlipayTradeRefundRequest(biz_model=model))
    refund = AlipayTradeRefundResponse()
    refund.parse_response_content(content)
    check(
        refund.is_success() and refund.code == "10000",
        f"alipay.trade.refund: signature verified, success ({content})",
    )
    check(refund.out_trade_no == paid, "the refund answer names the paid order")
    check(refund.fund_change == "Y", "the first refund moves money (fund_change Y)")
    check(refund.refund_fee == "0.01", f"refund_fee is 0.01 ({refund.refund_fee!r})")

    # An unknown trade: a business failure, still signed and verified by the SDK.
    content = client.execute(query_request(f"SDK-NONE-{paid}"))
    missing = AlipayTradeQueryResponse()
    missing.parse_response_content(content)
    check(
        not missing.is_success() and missing.sub_code == "ACQ.TRADE_NOT_EXIST",
        f"an unknown trade: signed ACQ.TRADE_NOT_EXIST ({content})",
    )

    # The notification, verified as Alipay's docs say: every parameter but `sign` and
    # `sign_type`, sorted by name, joined as k=v with &, checked with Alipay's public key.
    with open(env["SDK_NOTIFICATION"], encoding="utf-8") as f:
        captured = json.load(f)
    params = dict(parse_qsl(captured["body"], keep_blank_values=True))
    sign = params.pop("sign")
    check(params.pop("sign_type") == "RSA2", "the notification's sign_type is RSA2")
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    check(
        verify_with_rsa(alipay_public_key, message.encode("utf-8"), sign),
        "the notification verifies with the SDK's verify_with_rsa",
    )
    check(
        sha256_signed(alipay_public_key, message, sign),
        "the notification is signed RSA2 (SHA256withRSA)",
    )
    check(params.get("out_trade_no") == paid, "it names the paid order")
    check(params.get("trade_status") == "TRADE_SUCCESS", "its trade_status is TRADE_SUCCESS")
    check(params.get("app_id") == env["ALIPAY_APP_ID"], "its app_id is the app's")
    check(params.get("total_amount") == "9.90", "its total_amount is 9.90")
    try:
        verify_with_rsa(
            alipay_public_key, message.replace("9.90", "0.01").encode("utf-8"), sign
        )
        refused = False
    except rsa.VerificationError:
        refused = True
    check(refused, "verify_with_rsa refuses the notification with an altered amount")
    print("alipay-sdk-python: every check passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line naming the failed check, for the Rust test's message
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
