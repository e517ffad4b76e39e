package org.apache.livy;

import java.io.File;
import java.util.NoSuchElementException;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SQLContext;
import org.apache.spark.streaming.api.java.JavaStreamingContext;

/**
 * What a {@link Job} is called with: the contexts of the session it runs in.
 *
 * <p>Written for sparkgate with the methods of Apache Livy's interface of this name, except
 * {@code hivectx()}: Spark 4 has no {@code HiveContext} (use {@link #sparkSession()}, built with
 * Hive support when the session has it).
 */
public interface JobContext {

  /** @return the session's Spark context, for Java */
  JavaSparkContext sc();

  /** @return an SQL context over the session's Spark session */
  SQLContext sqlctx();

  /**
   * @param <E> {@code org.apache.spark.sql.SparkSession}
   * @return the session's Spark session
   * @throws Exception never here (Livy's signature)
   */
  <E> E sparkSession() throws Exception;

  /**
   * @return the streaming context made by {@link #createStreamingContext(long)}
   * @throws IllegalStateException when there is none
   */
  JavaStreamingContext streamingctx();

  /**
   * Makes the session's streaming context.
   *
   * @param batchDuration the batch interval in milliseconds
   * @throws IllegalStateException when it exists already
   */
  void createStreamingContext(long batchDuration);

  /** Stops the streaming context (not the Spark context). */
  void stopStreamingCtx();

  /** @return a directory on the driver's host for this session's jobs */
  File getLocalTmpDir();

  /**
   * @param <T> the object's type
   * @param name what it was stored under
   * @return an object a job of this session stored
   * @throws NoSuchElementException when nothing is stored under the name
   */
  <T> T getSharedObject(String name) throws NoSuchElementException;

  /**
   * Keeps an object for later jobs of this session.
   *
   * @param <T> the object's type
   * @param name what to store it under
   * @param object the object
   */
  <T> void setSharedObject(String name, T object);

  /**
   * @param <T> the object's type
   * @param name what it was stored under
   * @return the object removed, or null
   */
  <T> T removeSharedObject(String name);
}
