package sparkgate.jobs;

import com.esotericsoftware.kryo.Kryo;
import com.esotericsoftware.kryo.io.Input;
import com.esotericsoftware.kryo.io.Output;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.net.URI;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.livy.Job;
import org.apache.livy.JobContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SQLContext;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.streaming.Duration;
import org.apache.spark.streaming.api.java.JavaStreamingContext;
import org.objenesis.strategy.StdInstantiatorStrategy;

/**
 * Runs JVM jobs in a sparkgate driver (called through py4j by the driver program): takes a
 * job's Kryo bytes, calls it with the session's {@link JobContext}, and gives back its result's
 * Kryo bytes. Kryo is set up as Apache Livy's client sets it up (no registered classes, the
 * default instantiator with objenesis's as the fallback, the jobs' class loader), so what that
 * client serializes reads back here and the other way round.
 */
public final class JobRunner {

  private final Context context;
  private final Jars jars;
  private volatile Thread running;

  /**
   * @param spark the session's Spark session
   * @param tmpDir the directory {@link JobContext#getLocalTmpDir()} names
   */
  public JobRunner(SparkSession spark, String tmpDir) {
    // The loader that found this class sees the API's interfaces, and through its parents
    // Spark and the jars the session was launched with.
    this.jars = new Jars(JobRunner.class.getClassLoader());
    this.context = new Context(spark, new File(tmpDir));
  }

  /**
   * Makes the classes of a jar on this host loadable by jobs.
   *
   * @param uri a {@code file:} URI or a local path
   * @throws Exception when it names no local file
   */
  public void addJar(String uri) throws Exception {
    URL url = uri.startsWith("file:") ? new URI(uri).toURL() : new File(uri).toURI().toURL();
    jars.add(url);
  }

  /**
   * Runs one job.
   *
   * @param serialized the job, serialized with Kryo
   * @return its result, serialized with Kryo
   * @throws Exception what the job threw, or why it could not be read
   */
  public byte[] run(byte[] serialized) throws Exception {
    Thread thread = Thread.currentThread();
    ClassLoader previous = thread.getContextClassLoader();
    thread.setContextClassLoader(jars);
    running = thread;
    try {
      Kryo kryo = kryo();
      Object job = kryo.readClassAndObject(new Input(serialized));
      if (!(job instanceof Job)) {
        String what = job == null ? "null" : job.getClass().getName();
        throw new IllegalArgumentException("the job is a " + what + ", not an org.apache.livy.Job");
      }
      Object result = ((Job<?>) job).call(context);
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      Output out = new Output(bytes);
      kryo.writeClassAndObject(out, result);
      out.flush();
      return bytes.toByteArray();
    } finally {
      running = null;
      thread.setContextClassLoader(previous);
      // A cancel's interrupt must not outlive the job on this (pooled) thread.
      Thread.interrupted();
    }
  }

  /**
   * Whether a job runs now: a cancelled job that ignores its interrupt still does, and the
   * session runs nothing else until it ends.
   */
  public boolean isRunning() {
    return running != null;
  }

  /** Interrupts the job that runs now, if any (a cancel). */
  public void interrupt() {
    Thread thread = running;
    if (thread != null) {
      thread.interrupt();
    }
  }

  private Kryo kryo() {
    Kryo kryo = new Kryo();
    kryo.setInstantiatorStrategy(new Kryo.DefaultInstantiatorStrategy(new StdInstantiatorStrategy()));
    kryo.setClassLoader(jars);
    return kryo;
  }

  /** The jobs' class loader: the driver's, and the session's jars. */
  private static final class Jars extends URLClassLoader {
    Jars(ClassLoader parent) {
      super(new URL[0], parent);
    }

    void add(URL url) {
      addURL(url);
    }
  }

  /** The session's contexts, as {@link JobContext} offers them. */
  private static final class Context implements JobContext {
    private final SparkSession spark;
    private final JavaSparkContext sc;
    private final File tmp;
    private final Map<String, Object> shared = new ConcurrentHashMap<>();
    private JavaStreamingContext streaming;

    Context(SparkSession spark, File tmp) {
      this.spark = spark;
      this.sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
      this.tmp = tmp;
    }

    @Override
    public JavaSparkContext sc() {
      return sc;
    }

    @Override
    @SuppressWarnings("deprecation")
    public SQLContext sqlctx() {
      return spark.sqlContext();
    }

    @Override
    @SuppressWarnings("unchecked")
    public <E> E sparkSession() {
      return (E) spark;
    }

    @Override
    public synchronized JavaStreamingContext streamingctx() {
      if (streaming == null) {
        throw new IllegalStateException("create the streaming context first: createStreamingContext(ms)");
      }
      return streaming;
    }

    @Override
    public synchronized void createStreamingContext(long batchDuration) {
      if (streaming != null) {
        throw new IllegalStateException("the streaming context exists already");
      }
      streaming = new JavaStreamingContext(sc, new Duration(batchDuration));
    }

    @Override
    public synchronized void stopStreamingCtx() {
      if (streaming == null) {
        throw new IllegalStateException("there is no streaming context to stop");
      }
      streaming.stop(false);
      streaming = null;
    }

    @Override
    public File getLocalTmpDir() {
      tmp.mkdirs();
      return tmp;
    }

    @Override
    @SuppressWarnings("unchecked")
    public <T> T getSharedObject(String name) {
      Object object = shared.get(name);
      if (object == null) {
        throw new NoSuchElementException("no shared object named " + name);
      }
      return (T) object;
    }

    @Override
    public <T> void setSharedObject(String name, T object) {
      shared.put(name, object);
    }

    @Override
    @SuppressWarnings("unchecked")
    public <T> T removeSharedObject(String name) {
      return (T) shared.remove(name);
    }
  }
}
