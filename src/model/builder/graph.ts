/**
 * A small DSL for building ONNX graphs: values are names (strings), `op` adds a node and returns
 * its output, initializers and constants are registered by name.
 */
import {
  type AttrValue,
  DataType,
  type Dim,
  type ModelDef,
  type NodeDef,
  type Tensor,
  type ValueInfo,
} from "./onnx-proto.ts";
import { float16Bytes } from "./quantize.ts";

/** Options of one node. */
export interface OpOptions {
  /** Exact output names (graph outputs need fixed names); generated when absent. */
  outputs?: string[];
  domain?: string;
}

/** Collects nodes, initializers and I/O, then yields a ModelDef. */
export class GraphBuilder {
  readonly nodes: NodeDef[] = [];
  readonly initializers: Tensor[] = [];
  readonly inputs: ValueInfo[] = [];
  readonly outputs: ValueInfo[] = [];
  readonly opsets: Record<string, number>;
  private used = new Map<string, number>();
  private constants = new Map<string, string>();
  private scopes: string[] = [];

  constructor(opset = 17) {
    this.opsets = { "": opset };
  }

  /** Runs `fn` with node and value names prefixed by `scope` (e.g. "/model/layers.3/self_attn"). */
  within<T>(scope: string, fn: () => T): T {
    this.scopes.push(scope);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  /** A fresh, unique value name under the current scope. */
  fresh(base: string): string {
    const name = `${this.scopes.join("")}/${base}`;
    const n = this.used.get(name) ?? 0;
    this.used.set(name, n + 1);
    return n === 0 ? name : `${name}_${n}`;
  }

  /** Declares a graph input and returns its name. */
  input(name: string, elemType: number, dims: Dim[]): string {
    this.inputs.push({ name, elemType, dims });
    return name;
  }

  /** Declares an existing value as a graph output. */
  output(name: string, elemType: number, dims: Dim[]): void {
    this.outputs.push({ name, elemType, dims });
  }

  /** Adds a node with one output and returns the output's name. */
  op(opType: string, inputs: string[], attributes?: Record<string, AttrValue>, options: OpOptions = {}): string {
    return this.opN(opType, inputs, 1, attributes, options)[0];
  }

  /** Adds a node with `count` outputs and returns their names. */
  opN(
    opType: string,
    inputs: string[],
    count: number,
    attributes?: Record<string, AttrValue>,
    options: OpOptions = {},
  ): string[] {
    const name = this.fresh(opType);
    const outputs = options.outputs ?? Array.from({ length: count }, (_, i) => `${name}_output_${i}`);
    if (options.domain && !(options.domain in this.opsets)) this.opsets[options.domain] = 1;
    this.nodes.push({ opType, inputs, outputs, name, domain: options.domain, attributes });
    return outputs;
  }

  /** Registers an initializer (weights) and returns its name. */
  initializer(tensor: Tensor): string {
    this.initializers.push(tensor);
    return tensor.name;
  }

  /** A small int64 constant (shapes, axes, indices), shared between uses. */
  int64(values: number[], dims: number[] = [values.length]): string {
    const key = `i64:${dims}:${values}`;
    return this.constant(key, () => {
      const data = new Uint8Array(values.length * 8);
      const view = new DataView(data.buffer);
      values.forEach((v, i) => view.setBigInt64(i * 8, BigInt(v), true));
      return {
        name: `const_i64_${dims.join("x") || "scalar"}_${values.join("_").replaceAll("-", "m")}`,
        dataType: DataType.INT64,
        dims,
        data,
      };
    });
  }

  /** A float32 or float16 constant filled from `values`, shared between uses. */
  float(values: number[], dataType: number = DataType.FLOAT, dims: number[] = []): string {
    const key = `f${dataType}:${dims}:${values}`;
    return this.constant(key, () => {
      const data = dataType === DataType.FLOAT16
        ? float16Bytes(values)
        : new Uint8Array(new Float32Array(values).buffer);
      return { name: `const_f${dataType === DataType.FLOAT16 ? 16 : 32}_${this.constants.size}`, dataType, dims, data };
    });
  }

  private constant(key: string, make: () => Tensor): string {
    let name = this.constants.get(key);
    if (name === undefined) {
      name = this.initializer(make());
      this.constants.set(key, name);
    }
    return name;
  }

  /** The finished model. */
  toModel(graphName: string, producer: string, irVersion = 8): ModelDef {
    return {
      irVersion,
      opsets: this.opsets,
      producer,
      graph: {
        name: graphName,
        nodes: this.nodes,
        initializers: this.initializers,
        inputs: this.inputs,
        outputs: this.outputs,
      },
    };
  }
}
