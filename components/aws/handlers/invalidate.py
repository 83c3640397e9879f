"""Invalidates the CloudFront cache of the tenant's site after a deploy.

Event: {"distribution_id": ..., "paths": ["/*"], "reference": <content hash>}.

CloudFront treats a repeated CallerReference as the same request and returns
the old invalidation instead of making a new one, so a rollback A -> B -> A
would never invalidate the second A. The CallerReference is therefore unique
per invocation (the content hash is kept in it only to be readable).
"""

import uuid


def caller_reference(event, context) -> str:
    request = getattr(context, "aws_request_id", None) or ""
    return f"{str(event.get('reference', ''))[:16]}-{request or 'local'}-{uuid.uuid4().hex}"


def handler(event, context, cloudfront=None):
    if cloudfront is None:
        import boto3  # provided by the Lambda runtime

        cloudfront = boto3.client("cloudfront")
    paths = list(event["paths"])
    result = cloudfront.create_invalidation(
        DistributionId=event["distribution_id"],
        InvalidationBatch={
            "Paths": {"Quantity": len(paths), "Items": paths},
            "CallerReference": caller_reference(event, context),
        },
    )
    return {"invalidation_id": result["Invalidation"]["Id"]}
