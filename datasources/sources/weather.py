"""
``weather``: the real 2013 hourly weather at a New York airport, for the
demo's current hour.

The demo replays 2013 (``replay_flights``), which keeps its simulated New
York time in Redis; this source reads the weather of that hour. Without a
replay running it uses today's date and hour, in 2013.
"""
import csv
import datetime
import functools
import logging
import zoneinfo
from pathlib import Path
from typing import Literal

import pydantic
from django.conf import settings

from pubsub.connection import Keys, sync_client

from ..base import ScheduledSource

logger = logging.getLogger(__name__)

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
FIELDS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust",
          "precip", "pressure", "visib")


class WeatherParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    airport: Literal["JFK", "LGA", "EWR"]


def clock_key():
    return f"{Keys().prefix}:demo:clock"


def demo_now():
    """The demo's simulated New York time, or now moved to 2013."""
    value = sync_client().get(clock_key())
    if value:
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            logger.warning("ignoring a malformed demo clock %r", value)
    now = datetime.datetime.now(NEW_YORK)
    if now.month == 2 and now.day == 29:
        now = now.replace(day=28)
    return now.replace(year=2013)


@functools.cache
def observations():
    """(airport, month, day, hour) -> the observation, read once."""
    path = Path(settings.VANILLA["DEMO_DATA_DIR"]) / "weather.csv"
    table = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            key = (row["origin"], int(row["month"]), int(row["day"]), int(row["hour"]))
            table[key] = {name: _number(row[name]) for name in FIELDS}
    logger.info("read %d weather observations from %s", len(table), path)
    return table


def _number(text):
    return None if text in ("", "NA") else round(float(text), 1)


def _celsius(fahrenheit):
    return None if fahrenheit is None else round((fahrenheit - 32) * 5 / 9, 1)


class WeatherSource(ScheduledSource):
    name = "weather"
    Params = WeatherParams
    description = "Hourly weather at JFK, LGA or EWR for the demo's hour (2013)."
    interval = 10.0
    history_size = 50

    def fetch(self, params):
        moment = demo_now()
        table = observations()
        airport = params["airport"]
        # A few hours have no observation: use the closest earlier one.
        for back in range(0, 24):
            at = moment - datetime.timedelta(hours=back)
            row = table.get((airport, at.month, at.day, at.hour))
            if row is not None:
                break
        else:
            raise LookupError(f"no weather for {airport} near {moment:%Y-%m-%d %H}h")
        return {
            "airport": airport,
            "hour": at.strftime("%Y-%m-%d %H:00"),
            "temp_c": _celsius(row["temp"]),
            "dewpoint_c": _celsius(row["dewp"]),
            "humidity": row["humid"],
            "wind_dir": row["wind_dir"],
            "wind_kmh": None if row["wind_speed"] is None
            else round(row["wind_speed"] * 1.609, 1),
            "precip_mm": None if row["precip"] is None
            else round(row["precip"] * 25.4, 1),
            "pressure_hpa": row["pressure"],
            "visibility_mi": row["visib"],
        }
