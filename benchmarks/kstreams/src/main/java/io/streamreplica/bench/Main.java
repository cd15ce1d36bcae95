package io.streamreplica.bench;

import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.state.Stores;

/**
 * The stream-replica worker's job as a Kafka Streams (Processor API) application: read the
 * compacted replication topic from the start, keep each grain's latest full state in a
 * persistent RocksDB key-value store (changelog off: the topic is its own changelog), commit
 * every 100 ms, one stream thread.
 *
 * <p>Run by benchmarks/kstreams_bench.py, which decides "done" as for the other contenders (the
 * group's committed offsets equal the end offsets) and then sends SIGTERM. On SIGTERM the app
 * closes Kafka Streams (flushing the stores), writes its final state to --dump and exits 0.
 * stdout carries JSON lines: running_at (partitions assigned, tasks ready), first_record_at,
 * and at the end the counters and the dump's size and time.
 *
 * <p>Usage: --bootstrap-servers H:P --topic T --application-id ID --state-dir DIR --dump FILE
 * [--commit-interval-ms 100] [--threads 1]
 */
public final class Main {
  private Main() {}

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = parse(argv);
    String appId = args.get("--application-id");
    Path stateDir = Path.of(args.get("--state-dir"));
    Path dump = Path.of(args.get("--dump"));

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("--bootstrap-servers"));
    props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, args.getOrDefault("--threads", "1"));
    props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG,
        args.getOrDefault("--commit-interval-ms", "100"));
    props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    // Everything else is Kafka Streams' default (at-least-once, 10 MiB record cache, its
    // consumer settings), as a user would write the app.

    Counts counts = new Counts();
    Topology topology = new Topology();
    topology.addSource("replication", new ByteArrayDeserializer(), new ByteArrayDeserializer(),
        args.get("--topic"));
    topology.addProcessor("replicate", () -> new ReplicaProcessor(counts), "replication");
    topology.addStateStore(
        Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(ReplicaProcessor.STORE),
                Serdes.Bytes(),
                Serdes.ByteArray())
            .withLoggingDisabled(),
        "replicate");

    KafkaStreams streams = new KafkaStreams(topology, props);
    CountDownLatch failed = new CountDownLatch(1);
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.RUNNING && before == KafkaStreams.State.REBALANCING) {
        emit("{\"running_at\": " + epochSeconds() + "}");
      }
    });
    streams.setUncaughtExceptionHandler(e -> {
      System.err.println("kstreams-replica: stream thread failed: " + e);
      failed.countDown();
      return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      int code = finish(streams, counts, stateDir.resolve(appId), dump);
      Runtime.getRuntime().halt(code); // SIGTERM is how the bench says "done": exit 0, not 143
    }, "kstreams-replica-shutdown"));
    streams.start();
    failed.await(); // until SIGTERM (the hook halts the JVM) or a failed stream thread
    System.exit(1);
  }

  /** Close Kafka Streams (flushes the store), dump the store, print the counters. */
  private static int finish(KafkaStreams streams, Counts counts, Path appStateDir, Path dump) {
    if (!streams.close(Duration.ofSeconds(60))) {
      System.err.println("kstreams-replica: Kafka Streams did not close within 60 s");
      return 1;
    }
    long started = System.nanoTime();
    try {
      long grains = Dump.write(appStateDir, dump);
      double seconds = (System.nanoTime() - started) / 1e9;
      emit("{\"counts\": " + counts.json() + ", \"grains\": " + grains + ", \"dump\": "
          + Dump.quote(dump.toString()) + ", \"dump_s\": " + seconds + "}");
      return 0;
    } catch (Exception e) {
      System.err.println("kstreams-replica: cannot dump the store under " + appStateDir + ": " + e);
      return 1;
    }
  }

  static void emit(String jsonLine) {
    System.out.println(jsonLine);
    System.out.flush();
  }

  static double epochSeconds() {
    return System.currentTimeMillis() / 1000.0;
  }

  private static Map<String, String> parse(String[] argv) {
    Map<String, String> args = new HashMap<>();
    for (int i = 0; i + 1 < argv.length; i += 2) {
      args.put(argv[i], argv[i + 1]);
    }
    for (String required :
        new String[] {"--bootstrap-servers", "--topic", "--application-id", "--state-dir",
            "--dump"}) {
      if (!args.containsKey(required)) {
        System.err.println("kstreams-replica: missing " + required);
        System.exit(2);
      }
    }
    return args;
  }
}
