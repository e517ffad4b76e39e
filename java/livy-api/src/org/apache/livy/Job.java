package org.apache.livy;

import java.io.Serializable;

/**
 * A unit of work that runs in a sparkgate session's driver, with the session's Spark contexts.
 *
 * <p>Written for sparkgate with the same name and method as the interface of Apache Livy's
 * programmatic API, so job classes written against Livy's API run unchanged. A client
 * serializes the job object with Kryo and submits it to {@code POST /sessions/{id}/submit-job}
 * with {@code "jobType": "spark"}; its classes come from jars the session has (upload-jar,
 * add-jar). The value it returns is serialized with Kryo and comes back as the job's result.
 *
 * @param <T> what the job returns
 */
public interface Job<T> extends Serializable {

  /**
   * Runs the job.
   *
   * @param jc the session's contexts
   * @return the job's result (serialized with Kryo for the client)
   * @throws Exception anything: the job then fails with its text as the error
   */
  T call(JobContext jc) throws Exception;
}
