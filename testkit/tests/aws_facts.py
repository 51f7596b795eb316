"""Checks the facts testkit/src/aws.rs states about moto, against a seeded
Moto (run by tests/aws.rs). argv: moto's plain endpoint, then the seeded keys
as JSON; the environment is Moto::client_env (a CONNECT proxy to the TLS
front, the test CA). Prints one JSON object: fact -> what was observed."""

import datetime
import email.utils
import hashlib
import json
import re
import sys
from urllib.parse import quote

import boto3
import botocore
import requests
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

endpoint, keys = sys.argv[1], json.loads(sys.argv[2])
ROLE = "arn:aws:iam::123456789012:role/AgentRole"
BUCKET = "moat-test"
out = {}
user = Credentials(keys["user"]["id"], keys["user"]["secret"])
untrusted = Credentials(keys["untrusted"]["id"], keys["untrusted"]["secret"])


def wrong(c):
    return Credentials(c.access_key, "w" * 40, c.token)


class KeepSha(S3SigV4Auth):
    """S3 signing that keeps a given x-amz-content-sha256 (botocore would
    replace it with its own)."""

    def _modify_request_before_signing(self, request):
        keep = request.headers.get("X-Amz-Content-SHA256")
        super()._modify_request_before_signing(request)
        if keep:
            del request.headers["X-Amz-Content-SHA256"]
            request.headers["X-Amz-Content-SHA256"] = keep


def send(method, path, service, creds, body=b"", headers=None, after=None):
    """Sign a request to moto directly; `after` changes the body once signed."""
    url = endpoint + path
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    (KeepSha if service == "s3" else SigV4Auth)(creds, service, "us-east-1").add_auth(req)
    p = req.prepare()
    r = requests.request(method, url, data=after(p.body) if after else p.body, headers=dict(p.headers))
    return r


def error(r):
    """`STATUS Code: Message` of an AWS error body (XML), or `STATUS ok`."""
    if r.status_code < 300:
        return f"{r.status_code} ok"
    code = re.search(r"<Code>([^<]*)</Code>", r.text)
    msg = re.search(r"<Message>([^<]*)</Message>", r.text)
    return f"{r.status_code} {code and code.group(1)}: {msg and msg.group(1)}"


FORM = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
JSON_SSM = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "AmazonSSM.GetParameter"}


def sts(creds, action, **params):
    body = "&".join([f"Action={action}", "Version=2011-06-15"] + [f"{k}={quote(str(v), safe='')}" for k, v in params.items()])
    return send("POST", "/", "sts", creds, body.encode(), FORM)


def ssm(creds, after=None):
    return send("POST", "/", "ssm", creds, b'{"Name":"/moat/test/db","WithDecryption":true}', JSON_SSM, after)


# Signatures, STS / SSM / S3, long-term key and AssumeRole credentials.
out["sts wrong secret"] = error(sts(wrong(user), "GetCallerIdentity"))
out["sts unknown key"] = error(sts(Credentials("AKIAUNKNOWNKEY000000", "x" * 40), "GetCallerIdentity"))
out["sts body changed after signing"] = error(send("POST", "/", "sts", user, b"Action=GetCallerIdentity&Version=2011-06-15", FORM, lambda b: b + b"&x=1"))
r = sts(user, "AssumeRole", RoleArn=ROLE, RoleSessionName="agent", DurationSeconds=900)
xml = r.text
sent = email.utils.parsedate_to_datetime(r.headers["date"])
exp = re.search(r"<Expiration>([^<]*)</Expiration>", xml).group(1)
expires = datetime.datetime.strptime(exp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
out["assume 900 expiration format"] = re.sub(r"\d", "D", exp)
out["assume 900 expires after Date"] = round((expires - sent).total_seconds())
tmp = Credentials(*(re.search(f"<{t}>([^<]*)</{t}>", xml).group(1) for t in ("AccessKeyId", "SecretAccessKey", "SessionToken")))
out["assumed sts"] = error(sts(tmp, "GetCallerIdentity"))
out["assumed sts wrong secret"] = error(sts(wrong(tmp), "GetCallerIdentity"))
out["assumed sts wrong token"] = error(sts(Credentials(tmp.access_key, tmp.secret_key, "bogus"), "GetCallerIdentity"))
out["assumed ssm"] = error(ssm(tmp))
out["assumed ssm wrong secret"] = error(ssm(wrong(tmp)))
out["assumed ssm body changed after signing"] = error(ssm(tmp, lambda b: b.replace(b"true", b"false")))
out["user ssm (no ssm policy)"] = error(ssm(user))
out["assumed s3 get"] = error(send("GET", f"/{BUCKET}?list-type=2", "s3", tmp))
out["assumed s3 wrong secret"] = error(send("GET", f"/{BUCKET}?list-type=2", "s3", wrong(tmp)))
out["user s3 (no s3 policy)"] = error(send("GET", f"/{BUCKET}?list-type=2", "s3", user))


def stored(key):
    return send("GET", f"/{BUCKET}/{key}", "s3", tmp).content.decode()


sha = {"x-amz-content-sha256": hashlib.sha256(b"signed").hexdigest()}
r = send("PUT", f"/{BUCKET}/h", "s3", tmp, b"signed", sha, lambda b: b"swapped")
out["s3 body not matching x-amz-content-sha256"] = f"{error(r)}, stored {stored('h')!r}"
r = send("PUT", f"/{BUCKET}/u", "s3", tmp, b"unsigned", {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
out["s3 UNSIGNED-PAYLOAD"] = f"{error(r)}, stored {stored('u')!r}"
zeros = "0" * 64
chunked = f"5;chunk-signature={zeros}\r\nhello\r\n0;chunk-signature={zeros}\r\n\r\n".encode()
streaming = {"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "5"}
r = send("PUT", f"/{BUCKET}/c", "s3", tmp, chunked, streaming)
out["s3 aws-chunked, chunk signatures all zero"] = f"{error(r)}, stored {stored('c')!r}"
out["s3 aws-chunked, seed signed with wrong secret"] = error(send("PUT", f"/{BUCKET}/c2", "s3", wrong(tmp), chunked, streaming))
trailer = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
r = send("PUT", f"/{BUCKET}/t", "s3", tmp, trailer, {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "5", "x-amz-trailer": "x-amz-checksum-crc32"})
out["s3 unsigned trailer, wrong crc32"] = f"{error(r)}, stored {stored('t')!r}"
r = requests.get(endpoint + f"/{BUCKET}/u")
out["s3 GetObject, no Authorization"] = f"{r.status_code} {r.text!r}"
out["s3 ListObjectsV2, no Authorization"] = f"{requests.get(endpoint + f'/{BUCKET}?list-type=2').status_code}"
out["sts no Authorization"] = f"{requests.post(endpoint + '/', data='Action=GetCallerIdentity&Version=2011-06-15', headers=FORM).status_code}"

# AssumeRole: the trust policy and odd role ARNs.
out["assume untrusted user"] = error(sts(untrusted, "AssumeRole", RoleArn=ROLE, RoleSessionName="agent"))
out["assume malformed arn"] = error(sts(user, "AssumeRole", RoleArn="not-an-arn-at-all-xx", RoleSessionName="agent"))
out["assume 899 s"] = error(sts(user, "AssumeRole", RoleArn=ROLE, RoleSessionName="agent", DurationSeconds=899))
try:
    boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=user.access_key, aws_secret_access_key=user.secret_key).assume_role(RoleArn="not-an-arn", RoleSessionName="agent")
    out["boto3 malformed arn"] = "sent"
except botocore.exceptions.ParamValidationError as e:
    out["boto3 malformed arn"] = " ".join(str(e).split())

# Through the TLS front by the real names; the x-amz-content-sha256 boto3 sends.
sent_headers = []
botocore_session = botocore.session.get_session()


def record(request, **_):
    h = request.headers.get("X-Amz-Content-SHA256")
    sent_headers.append((request.method, request.url, h.decode() if isinstance(h, bytes) else h))


botocore_session.register("before-send.s3", record)
session = boto3.Session(botocore_session=botocore_session, aws_access_key_id=tmp.access_key, aws_secret_access_key=tmp.secret_key, aws_session_token=tmp.token, region_name="us-east-1")
u = boto3.Session(aws_access_key_id=user.access_key, aws_secret_access_key=user.secret_key, region_name="us-east-1")
out["front sts default"] = u.client("sts").get_caller_identity()["Arn"]
out["front sts global"] = u.client("sts", endpoint_url="https://sts.amazonaws.com").get_caller_identity()["Arn"]
out["front ssm"] = session.client("ssm").get_parameter(Name="/moat/test/db", WithDecryption=True)["Parameter"]["Value"]
try:
    u.client("iam").get_user()
except botocore.exceptions.ClientError as e:
    out["front iam"] = e.response["Error"]["Code"]
for style, url in (("path", None), ("virtual", None), ("virtual", "https://s3.us-east-1.amazonaws.com")):
    s3 = session.client("s3", endpoint_url=url, config=Config(s3={"addressing_style": style}))
    sent_headers.clear()
    s3.put_object(Bucket=BUCKET, Key=style, Body=style.encode())
    got = s3.get_object(Bucket=BUCKET, Key=style)["Body"].read().decode()
    out[f"front s3 {style} {url or 'default'}"] = f"{sent_headers[-1][1].split('/')[2]} {got}"
s3 = session.client("s3")
sent_headers.clear()
s3.put_object(Bucket=BUCKET, Key="small", Body=b"x" * 1000)
s3.upload_file(sys.argv[3], BUCKET, "big")
s3.get_object(Bucket=BUCKET, Key="big")["Body"].read()
out["boto3 https sends"] = sorted({f"{m} {re.sub(r'uploadId=[^&]*', 'uploadId=…', re.sub(r'partNumber=[0-9]+', 'partNumber=N', url.split('://')[1]))} {'<sha256 hex>' if re.fullmatch('[0-9a-f]{64}', h or '') and h != hashlib.sha256(b'').hexdigest() else h}" for m, url, h in sent_headers})
print(json.dumps(out, indent=1))
