"""
The operator's view of topologies: what each consumes and feeds, where it
stands on every runner, and the Start and Stop actions.

The status column (and the status field of the change form) refreshes itself
every two seconds from a JSON view under the changelist, ``status/``.
"""
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator
from django.utils.translation import ngettext

from .models import Topology, TopologyStatus
from .topologies import set_desired_state

#: Colours of the status column, by state.
COLOURS = {
    TopologyStatus.State.RUNNING: "#2e7d32",
    TopologyStatus.State.STARTING: "#1565c0",
    TopologyStatus.State.IDLE: "#6d6d6d",
    TopologyStatus.State.ERROR: "#c62828",
    TopologyStatus.State.STOPPED: "#6d6d6d",
}


def render_status(topology):
    """One line of HTML: state per live runner, lag, rate, poison, last error."""
    alive = [status for status in topology.statuses.all() if status.is_alive]
    if not alive:
        return format_html(
            '<span style="color:{}">{}</span>',
            COLOURS[TopologyStatus.State.STOPPED],
            "no runner" if topology.is_running else "stopped",
        )
    states = sorted({status.state for status in alive})
    parts = [
        format_html_join(
            " ",
            '<strong style="color:{}">{}</strong>',
            ((COLOURS[state], state) for state in states),
        ),
        ngettext("%d runner", "%d runners", len(alive)) % len(alive),
        _summary(alive),
    ]
    errors = [status.last_error for status in alive if status.state == "error"]
    if errors:
        parts.append(format_html("<em>{}</em>", Truncator(errors[0]).chars(120)))
    return format_html_join(" · ", "{}", ((part,) for part in parts if part))


def _summary(statuses):
    partitions = sum(len(status.partitions) for status in statuses)
    lag = sum(status.lag for status in statuses)
    rate = sum(status.records_per_second for status in statuses)
    poison = sum(status.poison_count for status in statuses)
    text = f"{partitions} partitions, lag {lag}, {rate:.1f} records/s"
    return text + (f", {poison} poison" if poison else "")


class TopologyStatusInline(admin.TabularInline):
    """What each runner last reported; runners write it, nobody edits it."""

    model = TopologyStatus
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "runner_id",
        "state",
        "partitions",
        "records_per_second",
        "records",
        "last_record_at",
        "poison_count",
        "error_count",
        "last_error",
        "heartbeat",
    )

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Topology)
class TopologyAdmin(admin.ModelAdmin):
    list_display = ("name", "source", "topics", "mode", "desired_state", "status")
    list_filter = ("desired_state", "mode", "source")
    search_fields = ("name", "topics", "description")
    actions = ["start", "stop"]
    readonly_fields = ("status", "created", "updated")
    fieldsets = (
        (None, {"fields": ("name", "description", "desired_state", "status")}),
        (
            "Kafka",
            {
                "fields": (
                    "topics",
                    "group_id",
                    "start_from",
                    "dead_letter_topic",
                    "max_record_bytes",
                )
            },
        ),
        (
            "Publishing",
            {"fields": ("source", "mode", "params_map", "payload_fields")},
        ),
        ("History", {"fields": ("created", "updated"), "classes": ("collapse",)}),
    )
    inlines = [TopologyStatusInline]

    class Media:
        js = ("datasources/js/topology-status.js",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("statuses")

    @admin.display(description="status")
    def status(self, topology):
        if topology.pk is None:
            return "-"
        return format_html(
            '<span data-topology-status="{}" data-status-url="{}">{}</span>',
            topology.name,
            reverse("admin:datasources_topology_status"),
            render_status(topology),
        )

    # --- the status view ------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view(self.status_view)
        status = path("status/", view, name="datasources_topology_status")
        return [status] + super().get_urls()

    def status_view(self, request):
        """name -> the status column's HTML, for the refreshing script."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        topologies = self.get_queryset(request)
        return JsonResponse(
            {"topologies": {each.name: render_status(each) for each in topologies}}
        )

    # --- actions ------------------------------------------------------------

    @admin.action(description="Start the selected topologies", permissions=["change"])
    def start(self, request, queryset):
        self._set_desired_state(request, queryset, Topology.DesiredState.RUNNING)

    @admin.action(description="Stop the selected topologies", permissions=["change"])
    def stop(self, request, queryset):
        self._set_desired_state(request, queryset, Topology.DesiredState.STOPPED)

    def _set_desired_state(self, request, queryset, state):
        selected = queryset.count()
        changed = set_desired_state(queryset, state)
        verb = "started" if state == Topology.DesiredState.RUNNING else "stopped"
        if changed:
            message = ngettext(
                "%(count)d topology was %(verb)s; runners follow within seconds.",
                "%(count)d topologies were %(verb)s; runners follow within seconds.",
                changed,
            )
            self.message_user(
                request, message % {"count": changed, "verb": verb}, messages.SUCCESS
            )
        if selected - changed:
            message = ngettext(
                "%(count)d topology was %(verb)s already.",
                "%(count)d topologies were %(verb)s already.",
                selected - changed,
            )
            self.message_user(
                request,
                message % {"count": selected - changed, "verb": verb},
                messages.INFO,
            )
