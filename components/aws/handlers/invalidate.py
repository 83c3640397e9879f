"""Invalidates the CloudFront cache of the tenant's site after a deploy.

Event: {"distribution_id": ..., "paths": ["/*"], "reference": <content hash>}.
"""

import boto3  # provided by the Lambda runtime


def handler(event, _context):
    cloudfront = boto3.client("cloudfront")
    result = cloudfront.create_invalidation(
        DistributionId=event["distribution_id"],
        InvalidationBatch={
            "Paths": {"Quantity": len(event["paths"]), "Items": event["paths"]},
            "CallerReference": event["reference"],
        },
    )
    return {"invalidation_id": result["Invalidation"]["Id"]}
