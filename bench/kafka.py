"""
Kafka for scenario 3: a topic of the run's own, the topology that feeds the
``bench_departures`` source from it, and a wait until the topology's consumer
has its partition, so that no record is produced before anyone consumes.

The topology row is written by a child process with Vanilla's settings:

    python -m bench.kafka NAME KAFKA_TOPIC GROUP_ID
"""
import asyncio
import sys
import time

CONSUMER_WAIT = 60.0


def admin(bootstrap):
    from confluent_kafka.admin import AdminClient

    # Warnings and errors only: at its default level librdkafka tells the
    # driver's output about events it purges on closing.
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})


# The admin client must outlive its futures: one that is garbage-collected
# fails them with _DESTROY. Hence the local variable in each function below.


def create_topic(bootstrap, name):
    from confluent_kafka.admin import NewTopic

    client = admin(bootstrap)
    futures = client.create_topics(
        [NewTopic(name, num_partitions=1, replication_factor=1)]
    )
    futures[name].result(timeout=30)


def delete_topic(bootstrap, name):
    client = admin(bootstrap)
    futures = client.delete_topics([name], operation_timeout=10)
    try:
        futures[name].result(timeout=30)
    except Exception as exc:  # the run is over either way: say so, go on
        print(f"could not delete Kafka topic {name}: {exc}", file=sys.stderr)


def consumer_assigned(bootstrap, group_id):
    """True once the group is stable with a partition assigned."""
    from confluent_kafka import ConsumerGroupState

    client = admin(bootstrap)
    futures = client.describe_consumer_groups([group_id], request_timeout=5)
    try:
        group = futures[group_id].result(timeout=10)
    except Exception:
        return False
    return group.state == ConsumerGroupState.STABLE and any(
        member.assignment and member.assignment.topic_partitions
        for member in group.members
    )


async def wait_for_consumer(bootstrap, group_id, timeout=CONSUMER_WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(consumer_assigned, bootstrap, group_id):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the topology's consumer group {group_id} got no partition")


def create_topology(name, kafka_topic, group_id):
    """An always-on topology from ``kafka_topic`` to ``bench_departures``."""
    import django

    django.setup()
    from datasources.models import Topology

    topology = Topology(
        name=name,
        description="Benchmark: departures stamped by bench.publisher.",
        topics=kafka_topic,
        group_id=group_id,
        source="bench_departures",
        mode=Topology.Mode.ALWAYS_ON,
        start_from=Topology.StartFrom.EARLIEST,
        desired_state=Topology.DesiredState.RUNNING,
    )
    topology.full_clean()
    topology.save()


if __name__ == "__main__":
    create_topology(*sys.argv[1:4])
