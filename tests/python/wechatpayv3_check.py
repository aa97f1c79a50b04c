"""Drives gateway-sim's WeChat Pay with the widely used Python SDK `wechatpayv3`, as a
shop testing its own WeChat code against the simulator would. Run by tests/wechat_sdk.rs,
which starts the simulator, pays one trade, captures the notification the simulator sent
about it, and hands everything over in environment variables:

  WECHAT_GATEWAY_URL, WECHAT_MCH_ID, WECHAT_MCH_SERIAL, WECHAT_MCH_PRIVATE_KEY,
  WECHAT_PUBLIC_KEY, WECHAT_PUBLIC_KEY_ID, WECHAT_API_V3_KEY  (the simulator's client vars)
  SDK_PAID_ORDER      an order the buyer paid
  SDK_WAITING_ORDER   an order the buyer scanned and did not pay
  SDK_NOTIFICATION    a JSON file {"headers": {...}, "body": "..."}: the notification

The SDK raises on every 2xx answer or notification whose signature it does not accept
(including a missing `Wechatpay-Signature-Type` header), so each call below fails loudly
if the simulator is not WeChat-exact. Every time the simulator writes must be whole
seconds, as WeChat's are. Prints one line per check; exits non-zero on the first failure.
"""

import json
import os
import re
import sys

from wechatpayv3 import WeChatPay, WeChatPayType

WHOLE_SECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+08:00$")


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def whole_seconds(value, what):
    check(
        isinstance(value, str) and WHOLE_SECONDS.match(value) is not None,
        f"{what} is whole seconds at +08:00 ({value!r})",
    )


def main():
    env = os.environ
    pay = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=env["WECHAT_MCH_ID"],
        private_key=env["WECHAT_MCH_PRIVATE_KEY"],
        cert_serial_no=env["WECHAT_MCH_SERIAL"],
        appid="wxd678efh567hg6787",
        apiv3_key=env["WECHAT_API_V3_KEY"],
        public_key=env["WECHAT_PUBLIC_KEY"],
        public_key_id=env["WECHAT_PUBLIC_KEY_ID"],
        timeout=(5, 10),
    )
    # The SDK has no setting for the base URL: point it at the simulator.
    pay._core._gate_way = env["WECHAT_GATEWAY_URL"].rstrip("/")

    paid = env["SDK_PAID_ORDER"]
    code, text = pay.query(out_trade_no=paid)
    check(code == 200, f"query {paid}: HTTP 200, signature accepted by the SDK")
    trade = json.loads(text)
    check(trade.get("trade_state") == "SUCCESS", "the paid trade reads SUCCESS")
    whole_seconds(trade.get("success_time"), "the query answer's success_time")

    waiting = env["SDK_WAITING_ORDER"]
    code, text = pay.close(out_trade_no=waiting)
    check(code == 204, f"close {waiting}: HTTP 204, signature over the empty body accepted")

    code, text = pay.refund(
        out_refund_no=f"SDK-RF-{paid}",
        amount={"refund": 1, "total": trade["amount"]["total"], "currency": "CNY"},
        out_trade_no=paid,
    )
    check(code == 200, "refund: HTTP 200, signature accepted")
    refund = json.loads(text)
    whole_seconds(refund.get("create_time"), "the refund answer's create_time")
    whole_seconds(refund.get("success_time"), "the refund answer's success_time")

    with open(env["SDK_NOTIFICATION"], encoding="utf-8") as f:
        captured = json.load(f)
    headers, body = captured["headers"], captured["body"]
    result = pay.callback(headers, body)
    check(result is not None, "the notification verifies and decrypts with the SDK")
    check(result.get("event_type") == "TRANSACTION.SUCCESS", "its event is TRANSACTION.SUCCESS")
    whole_seconds(result.get("create_time"), "the notification's create_time")
    resource = result["resource"]
    check(resource.get("out_trade_no") == paid, "its resource names the paid order")
    whole_seconds(resource.get("success_time"), "the resource's success_time")

    # The check above is not vacuous: without the signature type the SDK refuses.
    bare = {k: v for k, v in headers.items() if k.lower() != "wechatpay-signature-type"}
    try:
        pay.callback(bare, body)
        refused = False
    except Exception:
        refused = True
    check(refused, "the SDK refuses the same notification without Wechatpay-Signature-Type")
    print("wechatpayv3: every check passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line naming the failed check, for the Rust test's message
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
