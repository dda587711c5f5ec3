from django.http import JsonResponse

from pubsub.connection import sync_client


def health(request):
    """Liveness for a proxy or orchestrator: answers 503 while Redis is away."""
    try:
        sync_client().ping()
    except Exception as exc:
        return JsonResponse({"status": "degraded", "redis": str(exc)}, status=503)
    return JsonResponse({"status": "ok"})
